//! The int8 epilogue's suite: the reference never panics or overflows on any parameters.
#![forbid(unsafe_code)]

use crate::kernels::reference::{epilogue_i8, Requant};
use crate::kernels::testutil::{Awkward, EXTREME};
use crate::Activation;

/// [`epilogue_i8`] on every combination of extreme accumulators, residuals and
/// requantisation fields, for the extreme layer and the empty one (run in debug builds
/// too, where an overflow would panic).
#[test]
fn epilogue_never_panics() {
    let awk = Awkward::new();
    let layers = awk.layers();
    let extreme = EXTREME;
    for &m_pre in &extreme {
        for &sh in &extreme {
            let r = Requant {
                m_pre,
                sh_pre: sh,
                m_post: m_pre,
                b_post: sh,
                sh_post: sh,
                m_res: m_pre,
            };
            for act in [Activation::Relu, Activation::Gelu] {
                let _ = epilogue_i8(m_pre, sh, &r, &layers[0], act);
                let _ = epilogue_i8(sh, m_pre, &r, &layers[1], act);
            }
        }
    }
}
