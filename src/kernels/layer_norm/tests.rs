//! The fixed-point LayerNorm's shared suite: every ISA the running CPU has ([`isas`])
//! against the reference, byte for byte, on rows near the i16 limits, small and constant
//! rows, dims with and without a vector tail, both output layouts.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::reference;
use crate::kernels::testutil::{isas, Rng};

/// Every ISA's LayerNorm against the reference: 400 random cases.
#[test]
fn layer_norm_matches_the_reference() {
    let mut r = Rng(0x5eed_1a7e_0000_0001);
    let isas = isas();
    for case in 0..400 {
        let dim = match case % 5 {
            0 => r.range(1, 8),
            4 => r.range(200, 400),
            _ => r.range(1, 70),
        } as usize;
        let tokens = r.range(1, 6) as usize;
        // Rows near the i16 limits, small ones, and constant ones (variance 0: r ≤ 1
        // with a small eps takes the scalar step).
        let x: Vec<i16> = (0..tokens * dim)
            .map(|i| match case % 4 {
                0 => r.range(-32768, 32767) as i16,
                1 => r.range(-40, 40) as i16,
                2 => (case as i16).wrapping_mul(37),
                _ => {
                    if i % 2 == 0 {
                        32767
                    } else {
                        -32768
                    }
                }
            })
            .collect();
        let mut sec = Vec::new();
        let eps = if case % 3 == 0 {
            0
        } else {
            r.range(0, 1 << 40) as u64
        };
        sec.extend_from_slice(&eps.to_le_bytes());
        sec.extend_from_slice(&(r.range(0, 62) as i32).to_le_bytes());
        sec.extend_from_slice(&(r.range(-128, 127) as i32).to_le_bytes());
        for _ in 0..dim {
            sec.extend_from_slice(&(r.range(-(1 << 30), 1 << 30) as i32).to_le_bytes());
        }
        for _ in 0..dim {
            let o = r.range(-(1 << 40), 1 << 40) * r.range(-(1 << 15), 1 << 15);
            sec.extend_from_slice(&o.to_le_bytes());
        }
        let p = reference::LayerNormI16::from_section(&sec, dim);
        for transposed in [false, true] {
            let mut want = vec![0i8; tokens * dim];
            reference::layer_norm_i16(&x, tokens, dim, &p, &mut want, transposed);
            for &isa in &isas {
                let mut got = vec![0i8; tokens * dim];
                layer_norm_i16(&x, tokens, dim, &p, &mut got, transposed, isa);
                assert_eq!(
                    got, want,
                    "{isa:?} case {case}: dim {dim} tokens {tokens} transposed {transposed}"
                );
                if !transposed {
                    continue;
                }
                // Split by tokens into 1..=4 cores' columns (last first), tiles of one
                // token, of three and of every token.
                for (parts, tile) in [(1, dim), (2, 3 * dim), (3, dim), (4, tokens * dim)] {
                    let mut got = vec![0i8; tokens * dim];
                    let mut tile = vec![0i8; tile];
                    let mut views = ChannelsMut::split(&mut got, tokens, 1, parts);
                    for v in views.iter_mut().rev() {
                        layer_norm_i16_columns(&x, tokens, dim, &p, v, &mut tile, isa);
                    }
                    drop(views);
                    assert_eq!(got, want, "{isa:?} case {case}: {parts} parts");
                }
            }
        }
    }
}
