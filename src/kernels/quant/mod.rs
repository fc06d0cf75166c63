//! The int8 requantisation shared by every int8 op (GEMM, depthwise): the scalar
//! reference ([`reference`], re-exported by [`super::reference`]) and, per ISA, the vector
//! epilogue the op kernels of that ISA share (`neon`: 16 channels × 1..4 tokens per call;
//! `x86`: AVX2, 8 channels × 1..8 tokens).
//! Its tests (`tests.rs`) run every available ISA's epilogue against the reference.

pub(super) mod reference;

// The NEON kernels read little-endian blob fields as native integers, and exist only where
// NEON is a compile-time target feature (so no run-time check is needed for it).
#[cfg(all(
    target_arch = "aarch64",
    target_endian = "little",
    target_feature = "neon"
))]
#[allow(unsafe_code)]
pub(super) mod neon;

// The AVX2 epilogue, for the AVX2 kernels (which run only where Isa::Avx2 was detected).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod x86;

#[cfg(test)]
mod tests;
