//! The float global average pool + linear head: only the reference
//! ([`reference::head_f`]) so far; SIMD variants go beside it.

pub(super) mod reference;
