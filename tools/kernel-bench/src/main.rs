//! `cargo run --release -p kernel-bench -- model BLOB [--threads N] [--rounds R] [--images K]`
//! times the whole model of a `.cmx` blob instead (`Model::logits`, see `model.rs`): the
//! real setting, where each layer's weights arrive cold, which the single layers below do
//! not show. `cargo run --release -p kernel-bench -- fma-peak` measures one core's float
//! multiply-accumulate peak (`peak.rs`), the float pointwise conv's ceiling.
//!
//! `cargo run --release -p kernel-bench [-- --quick] [--simd-only]`: times the runtime's int8 kernels on
//! random layers of two ConvMixers through the same drivers the model runs (the patch
//! embedding, the in-place depthwise conv with its residual, the in-place pointwise conv,
//! the pool and head), with the portable scalar kernels and with every SIMD level of this
//! CPU (`--simd-only`: the best one only), on one core, and prints per op the time per
//! call, the GMAC/s and the per-image time they extrapolate to (embedding, `depth`
//! depthwise and pointwise layers, head), with the ratio of the first level to the last:
//!
//! * ConvMixer-768/32 at 224×224 (timm's `convmixer_768_32`: patch 7, kernel 7, ReLU, a
//!   32×32 token grid, 1000 classes);
//! * ConvMixer-256/8 at 32×32 (patch 2, kernel 5, GELU, a 16×16 grid, 10 classes: the
//!   README's B1).
//!
//! Each time is the best of several runs, in the thread's CPU time (the machine may be
//! shared: other processes' time slices do not count, their cache pollution does). Weights and
//! requantisation records are random within the blob reader's bounds (the kernels'
//! speed does not depend on the values); the layer's outputs are checked to be the same
//! on every level.

mod float;
mod model;
mod peak;

use std::hint::black_box;
use std::time::{Duration, Instant};

use convmixer_edge::kernels::reference::QuantLayer;
use convmixer_edge::kernels::{
    dw_i8, gemm_i8, gemm_index, gemm_packed_len, head_i8, EmbedGeom, Grid, Isa,
};
use convmixer_edge::le::{F32Le, I32Le};
use convmixer_edge::Activation;

/// xorshift64: reproducible random layers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// One int8 layer's sections: weights, bias, field-major requantisation records, table.
struct Layer {
    w: Vec<i8>,
    bias: Vec<u8>,
    rq: Vec<u8>,
    table: Vec<u8>,
}

impl Layer {
    /// Weights `w` and `n` channels' records: multipliers and shifts that keep activations
    /// spread over the int8 range.
    fn random(r: &mut Rng, w: Vec<i8>, n: usize, depthwise: bool) -> Layer {
        let le = |v: Vec<i32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bias = le((0..n).map(|_| r.range(-20_000, 20_000) as i32).collect());
        let recs: Vec<[i32; 6]> = (0..n)
            .map(|_| {
                [
                    r.range(1 << 30, (1 << 31) - 1) as i32,
                    r.range(6, 10) as i32,
                    r.range(1 << 10, 1 << 13) as i32,
                    r.range(-(1 << 16), 1 << 16) as i32,
                    r.range(8, 12) as i32,
                    if depthwise {
                        r.range(1 << 8, 1 << 12) as i32
                    } else {
                        0
                    },
                ]
            })
            .collect();
        let rq = le((0..6)
            .flat_map(|k| recs.iter().map(move |v| v[k]))
            .collect());
        let table = (0..256)
            .flat_map(|_| (r.range(-32768, 32767) as i16).to_le_bytes())
            .collect();
        Layer { w, bias, rq, table }
    }

    fn view(&self, zp_in: i32, act: Activation) -> QuantLayer<'_> {
        QuantLayer {
            w: &self.w,
            bias: I32Le(&self.bias),
            requant: I32Le(&self.rq),
            zp_in,
            zp_z: -3,
            zp_out: 5,
            table: if act == Activation::Relu {
                &[]
            } else {
                &self.table
            },
        }
    }
}

/// Packed GEMM weights for `n` outputs × `k` inputs, zero in the packing's padding (as the
/// blob reader requires).
fn packed(r: &mut Rng, n: usize, k: usize) -> Vec<i8> {
    let mut w = vec![0i8; gemm_packed_len(n, k)];
    for o in 0..n {
        for i in 0..k {
            if let Some(v) = w.get_mut(gemm_index(o, i, k)) {
                *v = r.range(-127, 127) as i8;
            }
        }
    }
    w
}

/// A ConvMixer's shape.
struct Net {
    name: &'static str,
    image: usize,
    in_c: usize,
    patch: usize,
    dim: usize,
    depth: usize,
    kernel: usize,
    classes: usize,
    act: Activation,
}

impl Net {
    fn grid(&self) -> Grid {
        let side = self.image / self.patch;
        Grid {
            ht: side,
            wt: side,
            dim: self.dim,
            kernel: self.kernel,
            pad_top: (self.kernel - 1) / 2,
            pad_left: (self.kernel - 1) / 2,
        }
    }
    fn embed(&self) -> EmbedGeom {
        EmbedGeom {
            in_h: self.image,
            in_w: self.image,
            in_c: self.in_c,
            patch: self.patch,
        }
    }
}

/// The thread's CPU time (Linux: `CLOCK_THREAD_CPUTIME_ID`), so that the other processes
/// of a shared machine do not count (their cache pollution still does); elsewhere the wall
/// clock since the first call.
fn now() -> Duration {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: clock_gettime writes one timespec (two 64-bit fields on 64-bit Linux)
        // into `ts`, which lives for the call.
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.sec as u64, ts.nsec as u32);
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// The best of `runs` timings of `f` (each run `reps` calls), per call (after one call to
/// warm the caches).
fn best(runs: usize, reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    (0..runs)
        .map(|_| {
            let t = now();
            for _ in 0..reps {
                f();
            }
            (now() - t) / reps as u32
        })
        .min()
        .unwrap_or_default()
}

/// Times of one op on each level, with its MACs per call and calls per image.
struct Op {
    name: &'static str,
    macs: f64,
    per_image: f64,
    times: Vec<Duration>,
}

/// The four ops of `net` (embedding, depthwise, pointwise, pool + head: `head` names the
/// last), no times yet.
fn ops(net: &Net, head: &'static str) -> Vec<Op> {
    let g = net.grid();
    let (d, t, k) = (g.dim, g.tokens(), g.kernel);
    let taps = net.embed().taps();
    let op = |name, macs: usize, per_image: usize| Op {
        name,
        macs: macs as f64,
        per_image: per_image as f64,
        times: vec![],
    };
    vec![
        op("patch embedding", t * taps * d, 1),
        op("depthwise + residual", t * d * k * k, net.depth),
        op("pointwise", t * d * d, net.depth),
        op(head, t * d + net.classes * d, 1),
    ]
}

/// Calls timed per op on `isa`: the best of many single calls filters out the other
/// processes' time slices; the scalar kernels (a second per call) run once or twice.
fn runs(isa: Isa, quick: bool) -> usize {
    match (isa, quick) {
        (Isa::Scalar, true) => 1,
        (Isa::Scalar, false) => 2,
        (_, true) => 6,
        (_, false) => 30,
    }
}

/// One table: per op and level the time per call and GMAC/s, the first level ÷ the last,
/// and the image extrapolated from the ops' calls per image.
fn print(title: &str, isas: &[Isa], ops: &[Op]) {
    println!("\n{title}");
    print!("{:<22} {:>10}", "op", "MMAC/call");
    for isa in isas {
        print!(" | {:>10} {:>8}", format!("{isa:?} ms"), "GMAC/s");
    }
    println!(" | ratio");
    let mut image = vec![0f64; isas.len()];
    for op in ops {
        print!("{:<22} {:>10.1}", op.name, op.macs / 1e6);
        for (i, t) in op.times.iter().enumerate() {
            let s = t.as_secs_f64();
            image[i] += s * op.per_image;
            print!(" | {:>10.3} {:>8.2}", s * 1e3, op.macs / s / 1e9);
        }
        let ratio = op.times[0].as_secs_f64() / op.times[op.times.len() - 1].as_secs_f64();
        println!(" | {ratio:.1}x");
    }
    let macs: f64 = ops.iter().map(|o| o.macs * o.per_image).sum();
    print!("{:<22} {:>10.1}", "per image (extrapol.)", macs / 1e6);
    for s in &image {
        print!(" | {:>10.1} {:>8.2}", s * 1e3, macs / s / 1e9);
    }
    println!(" | {:.1}x", image[0] / image[image.len() - 1]);
}

fn bench(net: &Net, isas: &[Isa], quick: bool) -> Vec<Op> {
    let mut r = Rng(0x5eed_0fc0_ffee);
    let g = net.grid();
    let e = net.embed();
    let (d, t, k) = (g.dim, g.tokens(), g.kernel);
    let taps = e.taps();
    let act = net.act;
    let runs = |isa: Isa| runs(isa, quick);

    let x: Vec<i8> = (0..t * d).map(|_| r.range(-128, 127) as i8).collect();
    let px: Vec<u8> = (0..net.image * net.image * net.in_c)
        .map(|_| r.range(0, 255) as u8)
        .collect();
    let (we, wp) = (packed(&mut r, d, taps), packed(&mut r, d, d));
    let wd: Vec<i8> = (0..k * k * d).map(|_| r.range(-127, 127) as i8).collect();
    let embed = Layer::random(&mut r, we, d, false);
    let dw = Layer::random(&mut r, wd, d, true);
    let pw = Layer::random(&mut r, wp, d, false);
    let head_w: Vec<i8> = (0..net.classes * d)
        .map(|_| r.range(-127, 127) as i8)
        .collect();
    let f32s = |v: f32, n: usize| v.to_le_bytes().repeat(n);
    let (scale, bias) = (f32s(1e-4, net.classes), f32s(0.5, net.classes));
    let scratch_len = dw_i8::scratch_len(g).max(gemm_i8::embed_scratch_len(e));

    let mut ops = ops(net, "pool + head");
    let mut outputs: Vec<Vec<i8>> = Vec::new();
    for &isa in isas {
        let mut scratch = vec![0i8; scratch_len];
        let mut a = x.clone();
        let mut results = Vec::new();
        // The patch embedding writes the whole tensor from the pixels.
        let l = embed.view(-128, act);
        ops[0].times.push(best(runs(isa), 1, || {
            gemm_i8::embed_i8(&px, e, d, &l, act, &mut scratch, &mut a, isa);
        }));
        results.extend_from_slice(&a);
        // The in-place layers run on a fresh copy each time (the values stay in range).
        let l = dw.view(3, act);
        ops[1].times.push(best(runs(isa), 1, || {
            a.copy_from_slice(&x);
            dw_i8::dw_i8_inplace(&mut a, &mut scratch, g, &l, act, isa);
        }));
        results.extend_from_slice(&a);
        let l = pw.view(0, act);
        ops[2].times.push(best(runs(isa), 1, || {
            a.copy_from_slice(&x);
            gemm_i8::pw_i8_inplace(&mut a, &mut scratch, t, d, &l, act, isa);
        }));
        results.extend_from_slice(&a);
        let (mut mean, mut logits) = (vec![0i32; d], vec![0f32; net.classes]);
        ops[3].times.push(best(runs(isa), 10, || {
            head_i8::head_i8(
                &x,
                t,
                d,
                -7,
                4,
                &head_w,
                F32Le(&scale),
                F32Le(&bias),
                &mut mean,
                &mut logits,
                isa,
            );
            black_box(&logits);
        }));
        results.extend(logits.iter().flat_map(|v| v.to_le_bytes()).map(|b| b as i8));
        outputs.push(results);
    }
    // The copies of the input inside the timed in-place layers are included (a 1/d share of
    // a pointwise layer's work); every level must have computed the same bytes.
    if outputs.windows(2).any(|w| w[0] != w[1]) {
        eprintln!("{}: the levels' outputs differ", net.name);
        std::process::exit(1);
    }
    ops
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "model") {
        model::run(&args[1..]);
        return;
    }
    if args.first().is_some_and(|a| a == "fma-peak") {
        peak::run();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let simd = Isa::detect();
    let simd_only = std::env::args().any(|a| a == "--simd-only");
    // Every level the CPU has (e.g. scalar, AVX2 and AVX-512 VNNI), or only the best.
    let isas: Vec<Isa> = if simd_only {
        vec![simd]
    } else {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    };
    println!(
        "kernel-bench: one core, levels {isas:?} (per op the best of several runs, in thread CPU time)"
    );
    let nets = [
        Net {
            name: "ConvMixer-768/32 @224 (p7, k7, ReLU, 32x32 tokens, 1000 classes)",
            image: 224,
            in_c: 3,
            patch: 7,
            dim: 768,
            depth: 32,
            kernel: 7,
            classes: 1000,
            act: Activation::Relu,
        },
        Net {
            name: "ConvMixer-256/8 @32 (B1: p2, k5, GELU, 16x16 tokens, 10 classes)",
            image: 32,
            in_c: 3,
            patch: 2,
            dim: 256,
            depth: 8,
            kernel: 5,
            classes: 10,
            act: Activation::Gelu,
        },
    ];
    for net in &nets {
        print(net.name, &isas, &bench(net, &isas, quick));
    }
    float::run(&nets, &isas, quick);
}
