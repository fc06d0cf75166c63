//! The float arithmetic every float op (`pw_f`, `dw_f`, `embed_f`, `head_f`) shares: the
//! reference definitions (`reference.rs`: the arithmetics, activations and epilogue,
//! re-exported by [`super::reference`]), what the NEON float kernels share (`neon.rs`), what
//! the AVX2 float kernels share (`x86.rs`), and the tests of the arithmetic itself plus
//! helpers for the ops' suites (`tests.rs`).

pub(super) mod reference;

// The NEON kernels exist only where NEON is a compile-time target feature (so no run-time
// check is needed for it).
#[cfg(all(
    target_arch = "aarch64",
    target_endian = "little",
    target_feature = "neon"
))]
#[allow(unsafe_code)]
pub(super) mod neon;

// The AVX2 kernels run only where Isa::Avx2 was detected (`x86::Params::new` checks).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod x86;

#[cfg(test)]
pub(super) mod tests;
