//! `tract-runner MODEL.onnx --shape 1,3,32,32 [--repeat N]`
//!
//! Loads an ONNX model with tract (fixed input shape, optimised plan), runs it `N` times
//! (default 1) on one deterministic input and prints the argmax of the first output. The
//! fp32 baseline that `host-tools bench` counts instructions of under qemu-aarch64, so it
//! does as little as possible besides the inferences: no threads, no image decoding.
//!
//! Every failure prints one line `error: …` and exits with status 1 (2 for usage errors).

use std::process::ExitCode;

use tract_onnx::prelude::*;

const USAGE: &str = "usage: tract-runner MODEL.onnx --shape N,C,H,W [--repeat N]";

/// Command-line arguments.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    model: String,
    shape: Vec<usize>,
    repeat: usize,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut model = None;
    let mut shape = None;
    let mut repeat = 1;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--shape" => {
                let v = value("--shape")?;
                let dims: Result<Vec<usize>, _> = v.split(',').map(|d| d.trim().parse()).collect();
                match dims {
                    Ok(d) if !d.is_empty() && d.iter().all(|&x| x > 0) => shape = Some(d),
                    _ => {
                        return Err(format!(
                            "--shape {v}: expected comma-separated positive sizes, e.g. 1,3,32,32"
                        ))
                    }
                }
            }
            "--repeat" => {
                let v = value("--repeat")?;
                repeat = v
                    .parse()
                    .map_err(|_| format!("--repeat {v}: expected a non-negative integer"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if model.is_none() => model = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s} (one model only)")),
        }
    }
    Ok(Args {
        model: model.ok_or("missing MODEL.onnx")?,
        shape: shape.ok_or("missing --shape N,C,H,W")?,
        repeat,
    })
}

/// Loads `path` with the input fixed to `shape`, optimised and runnable.
fn load(path: &str, shape: &[usize]) -> TractResult<Arc<TypedRunnableModel>> {
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_path(path)?;
    // Dynamo exports annotate every tensor with a symbolic batch dimension that tract
    // refuses to unify with the fixed one: drop the annotations, tract infers them anyway.
    if let Some(g) = proto.graph.as_mut() {
        g.value_info.clear();
        for o in &mut g.output {
            o.r#type = None;
        }
    }
    // Parsed with the model's folder, so that external data (PyTorch's default
    // `model.onnx` + `model.onnx.data`) is read by tract's own resolver.
    let dir = std::path::Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(".");
    let parsed = onnx.parse(&proto, Some(dir))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(TractError::msg(format!(
            "unresolved inputs: {:?}",
            parsed.unresolved_inputs
        )));
    }
    parsed
        .model
        .with_input_fact(0, f32::fact(shape).into())?
        .into_optimized()?
        .into_runnable()
}

/// A fixed pseudo-random input in [-1, 1) (xorshift), the same on every run.
fn input(shape: &[usize]) -> TractResult<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_shape(shape, &data)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn run(args: &Args) -> TractResult<usize> {
    let plan = load(&args.model, &args.shape)?;
    let x: TValue = input(&args.shape)?.into();
    let mut best = 0;
    for _ in 0..args.repeat {
        let out = plan.run(tvec!(x.clone()))?;
        let v = out[0].to_plain_array_view::<f32>()?;
        best = argmax(v.as_slice().unwrap_or(&[]));
    }
    Ok(best)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(best) => {
            println!("argmax {best} ({} runs)", args.repeat);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: {}: {}",
                args.model,
                format!("{e:#}").replace('\n', "; ")
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_arguments() {
        let a = parse_args(&v(&["m.onnx", "--shape", "1,3,32,32", "--repeat", "4"])).unwrap();
        assert_eq!(
            a,
            Args {
                model: "m.onnx".into(),
                shape: vec![1, 3, 32, 32],
                repeat: 4
            }
        );
        assert!(parse_args(&v(&["m.onnx"])).is_err());
        assert!(parse_args(&v(&["m.onnx", "--shape", "1,x"])).is_err());
        assert!(parse_args(&v(&["m.onnx", "--shape", "1,3", "--bogus"])).is_err());
    }
}
