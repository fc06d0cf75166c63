//! Results do not depend on the number of threads: the host passes over images
//! (calibration, histograms, bias-correction means, the mixed-precision search) fold their
//! per-image results in image order (`convmixer_quantize::par`), so a pool of 1 thread and
//! one of several give the same blob, byte for byte.

use convmixer_edge::Precision;
use convmixer_edge_tests::{mnist, root, MNIST_MEAN, MNIST_STD};
use convmixer_quantize::calibrate::Method;
use convmixer_quantize::forward::{forward, forward_layers};
use convmixer_quantize::mixed::Target;
use convmixer_quantize::random::{random_convmixer, RandomConfig};
use convmixer_quantize::{data, mixer, onnx, Options};

/// `f` on a rayon pool of `n` threads.
fn on<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("pool")
        .install(f)
}

fn opts(method: Method, bias_correction: bool) -> Options {
    Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        calibration: Some(method),
        bias_correction,
        ..Default::default()
    }
}

#[test]
fn convmixer_blobs_are_the_same_from_one_or_many_threads() {
    let m = onnx::import(&mnist("convmixer-mnist.torchscript.onnx")).expect("import");
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calib");
    for (method, bias) in [(Method::MinMax, false), (Method::Entropy, true)] {
        let o = opts(method, bias);
        let blob = |n| {
            on(n, || {
                convmixer_quantize::quantize(&m, Precision::Int8, &calib, &o, &|| {})
                    .expect("quantize")
            })
        };
        let one = blob(1);
        for n in [2, 3, 5] {
            assert!(
                one == blob(n),
                "{method:?}, bias correction {bias}: {n} threads differ"
            );
        }
    }
    // The mixed-precision search measures SQNR sums over the images: same choice, same blob.
    let few: Vec<Vec<u8>> = calib.iter().step_by(8).cloned().collect();
    let o = opts(Method::MinMax, false);
    let mixed = |n| {
        on(n, || {
            let (q, c) = convmixer_quantize::quantize_mixed(
                &m,
                &few,
                &[],
                &o,
                Target::SqnrMin(30.0),
                &|| {},
                &mut |_| {},
            )
            .expect("mixed");
            (q.blob, c.f16_layers, c.sqnr_db)
        })
    };
    let one = mixed(1);
    assert!(!one.1.is_empty(), "the target should need some f16 layers");
    assert!(one == mixed(3), "mixed precision: 3 threads differ");
}

#[test]
fn mlp_mixer_blobs_are_the_same_from_one_or_many_threads() {
    let m = mixer::import(&root().join("examples/mixer-mnist/mixer-lucid.torchscript.onnx"))
        .expect("import");
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calib");
    // Min/max; a clipping method's histograms; bias correction's means.
    for (method, bias) in [(Method::MinMax, false), (Method::Entropy, true)] {
        let o = opts(method, bias);
        let blob = |n| {
            on(n, || {
                mixer::quantize(&m, &calib, &o, &|| {}).expect("quantize")
            })
        };
        let one = blob(1);
        assert!(
            one == blob(4),
            "{method:?}, bias correction {bias}: 4 threads differ"
        );
    }
}

/// The fp32 forward's per-thread buffers carry nothing from one model or image to the
/// next: a small model run after a large one on the same thread gives what a fresh thread
/// gives, and so does a forward pass started from inside another's `visit`.
#[test]
fn reused_buffers_do_not_change_results() {
    let model = |dim, depth, kernel, patch, in_h, seed| {
        let cfg = RandomConfig {
            dim,
            depth,
            kernel,
            patch,
            in_c: 3,
            in_h,
            in_w: in_h,
            classes: 5,
            act: convmixer_edge::Activation::Gelu,
            seed,
        };
        convmixer_quantize::fold::fold(&random_convmixer(&cfg).unwrap(), &[], &[]).unwrap()
    };
    let (big, small) = (model(48, 3, 5, 2, 16, 1), model(20, 2, 3, 1, 6, 2));
    let px = |n: usize, seed: usize| -> Vec<u8> {
        (0..n).map(|i| ((i * 37 + seed * 11) % 251) as u8).collect()
    };
    let (pb, ps) = (px(16 * 16 * 3, 1), px(6 * 6 * 3, 2));
    let fresh = std::thread::spawn({
        let (small, ps) = (small.clone(), ps.clone());
        move || forward(&small, &ps)
    })
    .join()
    .unwrap();
    forward(&big, &pb);
    assert_eq!(forward(&small, &ps), fresh);
    let mut inner = Vec::new();
    forward_layers(&big, &pb, |l, _| {
        if l == 1 {
            inner = forward(&small, &ps);
        }
    });
    assert_eq!(inner, fresh);
}
