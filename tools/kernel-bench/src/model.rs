//! `kernel-bench model BLOB [--threads N] [--cores C] [--rounds R] [--images K] [--isa ISA]`: the whole model, as
//! `host-tools eval` runs it, without building the host tools. Loads a `.cmx` blob and
//! runs `Model::logits` on deterministic pseudo-random pixels (the timing does not depend
//! on the content): one thread, seconds per image (the median of `R` rounds of one image,
//! after a warm-up); with `--threads N`, also `N` `std::thread::scope` threads, each with
//! its own arena, each running `K` images per round, and the wall time per image (median of
//! `R` rounds). Both as wall-clock time and as the threads' CPU time (other processes' time
//! slices do not count, their contention for the cores and caches does): the machine may
//! be shared, so compare builds in interleaved runs, by their minima. With `--cores C`,
//! also one image's latency with each layer split over `C` cores (`Model::logits_on` on a
//! `Team` of this thread and `C − 1` scoped threads) against one core, the two interleaved round by round, and
//! their ratio (of the minima, and the median of the per-round ratios); the logits must be
//! bit-identical. `--isa` (`Scalar`, `Avx2`, `Avx512Vnni`, `Neon`, `NeonDot`; any case)
//! runs the model at that level instead of the detected one.

use std::time::Instant;

use convmixer_edge::kernels::Isa;
use convmixer_edge::Model;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The blob's bytes in a 16-byte-aligned buffer (as `include_blob!` places them).
fn aligned(bytes: &[u8]) -> Vec<u128> {
    bytes
        .chunks(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b[..c.len()].copy_from_slice(c);
            u128::from_ne_bytes(b)
        })
        .collect()
}

fn as_bytes(v: &[u128]) -> &[u8] {
    // SAFETY: `v` is `16·len` initialised bytes (u128 has no padding), borrowed for the
    // result's life.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 16) }
}

fn pixels(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

pub fn run(args: &[String]) {
    let mut path = None;
    let (mut threads, mut rounds, mut images, mut cores) = (1usize, 5usize, 2usize, 1usize);
    let mut isa = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--threads" => threads = num("--threads"),
            "--cores" => cores = num("--cores"),
            "--rounds" => rounds = num("--rounds"),
            "--images" => images = num("--images"),
            "--isa" => {
                let name = it.next().map(String::as_str).unwrap_or_default();
                isa = Some(
                    Isa::ALL
                        .into_iter()
                        .find(|i| format!("{i:?}").eq_ignore_ascii_case(name))
                        .unwrap_or_else(|| panic!("--isa {name}: one of {:?}", Isa::ALL)),
                );
            }
            p => path = Some(p.to_string()),
        }
    }
    let path = path.expect(
        "usage: kernel-bench model BLOB [--threads N] [--cores C] [--rounds R] [--images K] [--isa ISA]",
    );
    let bytes = std::fs::read(&path).expect("read blob");
    let store = aligned(&bytes);
    let blob = &as_bytes(&store)[..bytes.len()];
    let model = Model::from_bytes(blob).expect("valid blob");
    let model = match isa {
        Some(i) => model
            .with_isa(i)
            .unwrap_or_else(|e| panic!("--isa {i:?}: {e}")),
        None => model,
    };
    let h = model.header();
    let classes = usize::from(h.classes);
    println!(
        "{path}: {:?}, dim {}, depth {}, {} tokens, arena {} bytes",
        h.precision,
        h.dim,
        h.depth,
        h.tokens(),
        model.arena_len()
    );
    let one = |arena: &mut [u8], seed: u64| -> f32 {
        let px = pixels(model.input_len(), seed);
        let mut logits = vec![0f32; classes];
        model.logits(&px, arena, &mut logits).expect("logits");
        logits.iter().sum()
    };
    let mut arena = vec![0u8; model.arena_len()];
    let check = one(&mut arena, 1);
    let (t1, c1): (Vec<f64>, Vec<f64>) = (0..rounds)
        .map(|r| {
            let (t, c) = (Instant::now(), crate::now());
            std::hint::black_box(one(&mut arena, 2 + r as u64));
            (t.elapsed().as_secs_f64(), (crate::now() - c).as_secs_f64())
        })
        .unzip();
    println!(
        "1 thread : {:.3} s/image wall, {:.3} CPU (medians of {rounds}; min wall {:.3}, min CPU {:.3}) [logit sum {check}]",
        median(t1.clone()),
        median(c1.clone()),
        t1.iter().copied().fold(f64::INFINITY, f64::min),
        c1.iter().copied().fold(f64::INFINITY, f64::min)
    );
    if threads > 1 {
        let mut arenas: Vec<Vec<u8>> = (0..threads).map(|_| vec![0u8; model.arena_len()]).collect();
        // Wall time per image, and the threads' CPU time per image.
        let round = |arenas: &mut Vec<Vec<u8>>, k: usize| -> (f64, f64) {
            let t = Instant::now();
            let cpu: f64 = std::thread::scope(|s| {
                let hs: Vec<_> = arenas
                    .iter_mut()
                    .enumerate()
                    .map(|(i, a)| {
                        let one = &one;
                        s.spawn(move || {
                            let c = crate::now();
                            for j in 0..k {
                                std::hint::black_box(one(a, (100 + i * k + j) as u64));
                            }
                            (crate::now() - c).as_secs_f64()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(f64::NAN)).sum()
            });
            let n = (threads * k) as f64;
            (t.elapsed().as_secs_f64() / n, cpu / n)
        };
        round(&mut arenas, 1); // warm-up
        let (tn, cn): (Vec<f64>, Vec<f64>) =
            (0..rounds).map(|_| round(&mut arenas, images)).unzip();
        println!(
            "{threads} threads: {:.3} s/image wall, {:.3} CPU (medians of {rounds} rounds of {} images; min wall {:.3})",
            median(tn.clone()),
            median(cn),
            threads * images,
            tn.iter().copied().fold(f64::INFINITY, f64::min)
        );
    }
    if cores > 1 {
        split(&model, cores, rounds);
    }
}

/// One image on `cores` cores against one core, interleaved (see the module docs).
fn split(model: &Model, cores: usize, rounds: usize) {
    use convmixer_edge::cores::Team;
    Team::scoped(cores, |on| split_on(model, on, rounds))
}

fn split_on(model: &Model, on: &convmixer_edge::cores::Team, rounds: usize) {
    use convmixer_edge::cores::{Cores, OneCore};
    let cores = on.count();
    let classes = usize::from(model.header().classes);
    let mut arena = vec![0u8; model.arena_len_for(cores)];
    let px = pixels(model.input_len(), 7);
    let mut run = |c: &dyn convmixer_edge::cores::Cores| -> (f64, Vec<u32>) {
        let mut logits = vec![0f32; classes];
        let t = Instant::now();
        model
            .logits_on(c, &px, &mut arena, &mut logits)
            .expect("logits");
        (
            t.elapsed().as_secs_f64(),
            logits.iter().map(|v| v.to_bits()).collect(),
        )
    };
    let (_, want) = run(&OneCore);
    let (_, got) = run(on);
    assert_eq!(got, want, "{cores} cores changed the logits");
    let (mut t1, mut tn, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(3) {
        let (a, _) = run(&OneCore);
        let (b, _) = run(on);
        t1.push(a);
        tn.push(b);
        ratio.push(b / a);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "one image, {cores} cores: {:.4} s wall; 1 core: {:.4} s (minima of {} interleaved rounds); ratio {:.3} (of the minima), {:.3} (median per round); logits bit-identical",
        min(&tn),
        min(&t1),
        t1.len(),
        min(&tn) / min(&t1),
        median(ratio)
    );
}
