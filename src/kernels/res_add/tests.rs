//! The residual add's shared suite: every ISA the running CPU has ([`isas`]) against the
//! reference (`res_add_i16` per element), both layouts, parameters at the reader's limits.
#![forbid(unsafe_code)]

use std::vec::Vec;

use super::*;
use crate::kernels::reference::res_add_i16;
use crate::kernels::testutil::{isas, Rng};

/// Every ISA's [`add_residual`] against the reference per element: random tiles (ragged
/// lengths, both layouts), residual values near the i16 limits (saturation), and the
/// extreme multipliers and shifts the reader allows.
#[test]
fn residual_add_matches_the_reference() {
    let mut r = Rng(0x2e51_d0a1_1234_5678);
    let isas = isas();
    for case in 0..300 {
        let (rows, n) = (r.range(1, 9) as usize, r.range(1, 70) as usize);
        let add = ResAdd {
            zp: r.range(-128, 127) as i32,
            m: match case % 3 {
                0 => 1 << 22,
                1 => r.range(0, 1 << 22) as i32,
                _ => r.range(0, 300) as i32,
            },
            sh: if case % 5 == 0 {
                31
            } else {
                r.range(0, 24) as i32
            },
        };
        let q: Vec<i8> = (0..rows * n).map(|_| r.range(-128, 127) as i8).collect();
        let x: Vec<i16> = (0..rows * n)
            .map(|_| {
                if case % 4 == 0 {
                    [i16::MIN, i16::MAX][r.range(0, 1) as usize]
                } else {
                    r.range(-32768, 32767) as i16
                }
            })
            .collect();
        for transposed in [false, true] {
            let mut want = x.clone();
            for i in 0..rows {
                for j in 0..n {
                    let at = if transposed { j * rows + i } else { i * n + j };
                    want[at] = res_add_i16(want[at], q[i * n + j], add.zp, add.m, add.sh);
                }
            }
            for &isa in &isas {
                let mut got = x.clone();
                add_residual(&q, rows, n, add, &mut got, transposed, isa);
                assert_eq!(got, want, "{isa:?} {add:?} rows {rows} n {n} {transposed}");
            }
        }
    }
}
