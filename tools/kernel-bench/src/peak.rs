//! `kernel-bench fma-peak`: the float multiply-accumulate peak of one core, measured — the
//! ceiling the float pointwise conv is compared with. x86_64: 12 independent chains of
//! `VFMADD231PS` on `ymm` (8 lanes; 12 chains cover two FMA pipes' 4-cycle latency with
//! room), the best of 5 runs of 10⁸ steps, in MACs per second. Elsewhere: not measured.

/// Runs the measurement and prints it.
pub fn run() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            println!("fma-peak: this CPU has no AVX2/FMA");
            return;
        }
        let n = 100_000_000u64;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = crate::now();
            // SAFETY: AVX2 and FMA were detected above.
            std::hint::black_box(unsafe { chains(n) });
            best = best.min((crate::now() - t).as_secs_f64());
        }
        println!(
            "fma-peak: {:.1} GMAC/s on one core (12 chains × 8 lanes of VFMADD231PS, best of 5 × 10^8 steps, thread CPU time)",
            (n * 12 * 8) as f64 / best / 1e9
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("fma-peak: measured on x86_64 only");
}

/// `n` steps of 12 independent `acc = acc·a + b` chains.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains(n: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(1.000_000_1);
    let b = _mm256_set1_ps(0.999_999_9);
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..n {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    let mut o = [0f32; 8];
    // SAFETY: `o` holds the 8 f32 the store writes.
    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), s) };
    o.iter().sum()
}
