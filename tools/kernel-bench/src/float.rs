//! The float kernels (f32 blobs, and f16 blobs in f32 arithmetic: `F32Arith`, what every
//! CPU without FEAT_FP16 runs) on random layers of the same ConvMixers, through the drivers
//! the model runs (`embed_f::embed`, `dw_f::dw`, `pw_f::pw`, `head_f::head`), with f32 weights and with f16 weights, scalar and the best SIMD
//! level, one core; printed as the int8 tables are. Weights are random, scaled so that the
//! activations stay of order 1 (no subnormals, whose speed can differ); each level's
//! outputs must be bit-identical.

use convmixer_edge::kernels::reference::{F16Arith, F32Arith, FloatArith, FloatLayer};
use convmixer_edge::kernels::{dw_f, embed_f, fgemm_index, fgemm_packed_len, head_f, pw_f, Isa};
use convmixer_edge::le::{F16Le, F32Le, FloatWeights};

use crate::{best, ops, print, runs, Net, Op, Rng};

/// A uniform f32 in `[lo, hi)`.
fn unif(r: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * (r.next() >> 40) as f32 / (1u64 << 24) as f32
}

/// One float layer's sections (weights as f32 and as f16 bytes).
struct Layer {
    w32: Vec<u8>,
    w16: Vec<u8>,
    bias: Vec<u8>,
    scale: Vec<u8>,
    shift: Vec<u8>,
    unscale: Vec<u8>,
}

impl Layer {
    /// `w` (already in the layer's layout) and `n` channels of bias and affine.
    fn new(r: &mut Rng, w: Vec<f32>, n: usize) -> Layer {
        let le = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        Layer {
            w16: w
                .iter()
                .flat_map(|x| F16Arith::narrow(*x).to_le_bytes())
                .collect(),
            w32: le(w),
            bias: le((0..n).map(|_| unif(r, -0.1, 0.1)).collect()),
            scale: le((0..n).map(|_| unif(r, 0.5, 1.0)).collect()),
            shift: le((0..n).map(|_| unif(r, -0.1, 0.1)).collect()),
            unscale: le(vec![1.0; n]),
        }
    }

    /// The layer with its weights as `W` (f32 or f16 bytes, as `W::HALF` says).
    fn view<'a, W: FloatWeights>(&'a self, wrap: fn(&'a [u8]) -> W) -> FloatLayer<'a, W> {
        FloatLayer {
            w: wrap(if W::HALF { &self.w16 } else { &self.w32 }),
            bias: F32Le(&self.bias),
            scale: F32Le(&self.scale),
            shift: F32Le(&self.shift),
            unscale: F32Le(&self.unscale),
        }
    }
}

/// Packed float GEMM weights for `n` outputs × `k` inputs, uniform in ±`amp`, zero in the
/// packing's padding.
fn packed(r: &mut Rng, n: usize, k: usize, amp: f32) -> Vec<f32> {
    let mut w = vec![0f32; fgemm_packed_len(n, k)];
    for o in 0..n {
        for i in 0..k {
            if let Some(v) = w.get_mut(fgemm_index(o, i, k)) {
                *v = unif(r, -amp, amp);
            }
        }
    }
    w
}

/// The four ops of `net` on each level, with f16 weights where `half`, else f32.
fn bench(net: &Net, isas: &[Isa], quick: bool, half: bool) -> Vec<Op> {
    let mut r = Rng(0xf10a_7c0f_fee5);
    let g = net.grid();
    let e = net.embed();
    let (d, t, k) = (g.dim, g.tokens(), g.kernel);
    let taps = e.taps();
    let runs = |isa: Isa| runs(isa, quick);
    let x: Vec<f32> = (0..t * d).map(|_| unif(&mut r, -1.0, 1.0)).collect();
    let px: Vec<u8> = (0..net.image * net.image * net.in_c)
        .map(|_| r.next() as u8)
        .collect();
    let we = packed(&mut r, d, taps, 1.0 / (255.0 * (taps as f32).sqrt()));
    let embed = Layer::new(&mut r, we, d);
    let wd: Vec<f32> = (0..k * k * d)
        .map(|_| unif(&mut r, -1.0, 1.0) / k as f32)
        .collect();
    let dw = Layer::new(&mut r, wd, d);
    let wp = packed(&mut r, d, d, 1.0 / (d as f32).sqrt());
    let pw = Layer::new(&mut r, wp, d);
    let wh: Vec<f32> = (0..net.classes * d)
        .map(|_| unif(&mut r, -0.1, 0.1))
        .collect();
    let head_w = Layer::new(&mut r, wh, net.classes);

    let layers = [&embed, &dw, &pw, &head_w];
    let mut ops = ops(net, "pool + head");
    let data = Data {
        net,
        x: &x,
        px: &px,
        layers,
    };
    let outputs = if half {
        data.time(isas, &runs, &mut ops, F16Le)
    } else {
        data.time(isas, &runs, &mut ops, F32Le)
    };
    if outputs.windows(2).any(|w| w[0] != w[1]) {
        eprintln!("{} (float): the levels' outputs differ", net.name);
        std::process::exit(1);
    }
    ops
}

/// Prints one table: per op the time per call and GMAC/s on each level, and the
/// extrapolated per-image time.
/// The float tables of every net, f32 weights then f16 weights (`F32Arith`).
pub fn run(nets: &[Net], isas: &[Isa], quick: bool) {
    println!("\nFloat kernels (F32Arith: f32 blobs, and f16 blobs without FEAT_FP16)");
    for net in nets {
        let ops = bench(net, isas, quick, false);
        print(&format!("{} — f32 weights", net.name), isas, &ops);
        let ops = bench(net, isas, quick, true);
        print(&format!("{} — f16 weights", net.name), isas, &ops);
    }
}

/// One net's inputs and layers (embedding, depthwise, pointwise, head).
struct Data<'n> {
    net: &'n Net,
    x: &'n [f32],
    px: &'n [u8],
    layers: [&'n Layer; 4],
}

impl Data<'_> {
    /// Times the four ops on each level with weights `W`, into `ops`; every level's
    /// outputs, as bits.
    fn time<'a, W: FloatWeights>(
        &'a self,
        isas: &[Isa],
        runs: &dyn Fn(Isa) -> usize,
        ops: &mut [Op],
        wrap: fn(&'a [u8]) -> W,
    ) -> Vec<Vec<u32>> {
        let net = self.net;
        let (g, e) = (net.grid(), net.embed());
        let (d, t, act) = (g.dim, g.tokens(), net.act);
        let (x, px) = (self.x, self.px);
        let [embed, dw, pw, head_w] = self.layers;
        let mut outputs: Vec<Vec<u32>> = Vec::new();
        for &isa in isas {
            let mut a = vec![0f32; t * d];
            let mut b = vec![0f32; t * d];
            let mut scratch = vec![0f32; embed_f::embed_scratch_len(e)];
            let mut results = Vec::new();
            let l = embed.view(wrap);
            ops[0].times.push(best(runs(isa), 1, || {
                embed_f::embed::<W, F32Arith>(px, e, d, &l, act, &mut a, &mut scratch, isa);
            }));
            results.extend(a.iter().map(|v| v.to_bits()));
            let l = dw.view(wrap);
            ops[1].times.push(best(runs(isa), 1, || {
                dw_f::dw::<W, F32Arith>(x, g, &l, act, &mut b, isa);
            }));
            results.extend(b.iter().map(|v| v.to_bits()));
            let l = pw.view(wrap);
            ops[2].times.push(best(runs(isa), 1, || {
                pw_f::pw::<W, F32Arith>(x, t, d, &l, act, &mut a, isa);
            }));
            results.extend(a.iter().map(|v| v.to_bits()));
            let hw = head_w.view(wrap);
            let (mut mean, mut logits) = (vec![0f32; d], vec![0f32; net.classes]);
            ops[3].times.push(best(runs(isa), 3, || {
                head_f::head::<W, F32Arith>(x, t, d, &hw.w, hw.bias, &mut mean, &mut logits, isa);
                std::hint::black_box(&logits);
            }));
            results.extend(logits.iter().map(|v| v.to_bits()));
            outputs.push(results);
        }
        outputs
    }
}
