//! The GELU of int8 layers: one 256-entry table per layer over its pre-activation range
//! ([`GeluTable`]), and how each channel reaches it ([`TableMap`]).

use convmixer_edge::Activation;

use super::table_bytes;
use crate::calibrate::{asym, Range};

pub(crate) fn gelu(act: Activation, z: f64) -> f64 {
    match act {
        Activation::GeluTanh => {
            0.5 * z
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())
        }
        _ => 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2)),
    }
}

/// One layer's GELU table: 256 i16 entries `round(GELU(s_z·(z − zp_z)) / s_a)` for the
/// int8 index `z`, over the layer's pre-activation range (docs/blob-format.md).
pub(crate) struct GeluTable {
    act: Activation,
    pub(crate) s_z: f64,
    pub(crate) zp_z: i32,
    pub(crate) s_a: f64,
    entries: Vec<i16>,
}

impl GeluTable {
    /// The table over `[lo, hi]` (which contains 0).
    pub(crate) fn new(act: Activation, lo: f32, hi: f32) -> Self {
        let (s_z, zp_z) = asym(lo, hi);
        let g: Vec<f64> = (-128..128)
            .map(|z| gelu(act, s_z * f64::from(z - zp_z)))
            .collect();
        let max = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        let s_a = if max > 0.0 { max / 32767.0 } else { 1.0 };
        let entries = g.iter().map(|v| (v / s_a).round() as i16).collect();
        GeluTable {
            act,
            s_z,
            zp_z,
            s_a,
            entries,
        }
    }

    /// The TABLE section: two byte planes, low bytes then high bytes.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        table_bytes(&self.entries)
    }

    /// Largest real input the table covers (`z = 127`).
    fn top(&self) -> f64 {
        self.s_z * f64::from(127 - self.zp_z)
    }

    /// What the table gives for the real input `y`: the nearest index (saturating), its
    /// entry in real units.
    fn read(&self, y: f64) -> f64 {
        let z = ((y / self.s_z).round() + f64::from(self.zp_z)).clamp(-128.0, 127.0);
        f64::from(self.entries[(z + 128.0) as usize]) * self.s_a
    }
}

/// Where GELU is linear: `|GELU(y) − y| = |y|·Φ(−y) < 1.3·10⁻⁴` for `y ≥ 4` (tanh form
/// alike).
const GELU_LINEAR_FROM: f64 = 4.0;

/// A channel narrower than this many steps of its layer's GELU table may be read on the
/// table's linear part ([`TableMap`]); the linear part must be at least this wide too.
const NARROW_STEPS: f64 = 16.0;

/// How one GELU channel reaches its layer's shared table: the table index is
/// `z = zp_z + rq(acc′)` with the accumulator scaled by `k` and offset by `off` (real
/// units, through the bias and `m_pre`), i.e. the table is read at `y = k·(x + off)` for
/// the real pre-activation `x`; the activation is then taken as `p·TABLE[z] + q` (through
/// `m_post`, `b_post`). No runtime change: each channel has its own `m_pre`, bias, `m_post`
/// and `b_post` anyway.
///
/// The identity map reads the table at `x` itself. A channel whose calibrated range is
/// only a few table steps wide (BatchNorm statistics far from the tensor's, e.g. a channel
/// that lives on a large offset) would be quantised to a handful of values that way; such a
/// channel is instead stretched over the table's linear part (`y ≥ GELU_LINEAR_FROM`, where
/// `TABLE[z]` is affine in `z`), with `p`, `q` the least-squares affine fit of `GELU(x)` on
/// the channel's range by `GELU(y(x))`. GELU is smooth, so over a narrow range it is
/// affine to far better than the table's step. A map is considered only for a channel
/// narrower than [`NARROW_STEPS`] table steps and used only where it halves the worst
/// error against `GELU(x)` over the channel's calibrated range, simulated with the table's
/// own rounding; otherwise (most channels) the identity stays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TableMap {
    pub(crate) k: f64,
    pub(crate) off: f64,
    pub(crate) p: f64,
    pub(crate) q: f64,
}

impl TableMap {
    pub(crate) const IDENTITY: TableMap = TableMap {
        k: 1.0,
        off: 0.0,
        p: 1.0,
        q: 0.0,
    };

    /// The map for a channel whose calibrated pre-activation range is `r`.
    pub(crate) fn choose(table: &GeluTable, r: &Range) -> TableMap {
        // Only narrow channels: a wide one has enough of the table's steps as it is, and
        // the calibration method's clip applies to it (a map for a wide channel would
        // be driven by the outliers the method chose to clip). A narrow channel is taken
        // whole, even where the tensor's clip would cut it off entirely (a percentile of
        // a tensor whose top quarter is such channels).
        let (s_z, y_top) = (table.s_z, table.top());
        let (lo, hi) = (f64::from(r.lo), f64::from(r.hi));
        if !(hi > lo && s_z > 0.0)
            || hi - lo >= NARROW_STEPS * s_z
            || y_top - GELU_LINEAR_FROM < NARROW_STEPS * s_z
        {
            return Self::IDENTITY;
        }
        // Room of an eighth of the range on each side for values past the calibration.
        let (lo_m, w_m) = (lo - (hi - lo) / 8.0, (hi - lo) * 1.25);
        let k = (y_top - GELU_LINEAR_FROM) / w_m;
        let off = GELU_LINEAR_FROM / k - lo_m;
        const N: usize = 129;
        let xs: Vec<f64> = (0..N)
            .map(|j| lo + (hi - lo) * j as f64 / (N - 1) as f64)
            .collect();
        let g: Vec<f64> = xs.iter().map(|&x| gelu(table.act, x)).collect();
        let t: Vec<f64> = xs.iter().map(|&x| gelu(table.act, k * (x + off))).collect();
        let (mg, mt) = (mean(&g), mean(&t));
        let var: f64 = t.iter().map(|v| (v - mt) * (v - mt)).sum();
        if var <= 0.0 {
            return Self::IDENTITY;
        }
        let cov: f64 = t.iter().zip(&g).map(|(a, b)| (a - mt) * (b - mg)).sum();
        let p = cov / var;
        let map = TableMap {
            k,
            off,
            p,
            q: mg - p * mt,
        };
        if map.worst_error(table, &xs) < 0.5 * Self::IDENTITY.worst_error(table, &xs) {
            map
        } else {
            Self::IDENTITY
        }
    }

    /// The largest error against `GELU(x)` over `xs` of reading `table` through this map,
    /// with the table's index and entry rounding.
    fn worst_error(&self, table: &GeluTable, xs: &[f64]) -> f64 {
        xs.iter()
            .map(|&x| {
                (self.p * table.read(self.k * (x + self.off)) + self.q - gelu(table.act, x)).abs()
            })
            .fold(0.0, f64::max)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GELU table over `[-4, 7]`, as a layer whose channels reach +6 gets.
    fn table() -> GeluTable {
        GeluTable::new(Activation::Gelu, -4.0, 7.0)
    }

    /// The worst error of `m` against GELU on `[lo, hi]`, at 1001 points.
    fn worst(m: &TableMap, lo: f64, hi: f64) -> f64 {
        let xs: Vec<f64> = (0..=1000)
            .map(|j| lo + (hi - lo) * f64::from(j) / 1000.0)
            .collect();
        m.worst_error(&table(), &xs)
    }

    #[test]
    fn wide_channels_keep_the_table_as_it_is() {
        let t = table();
        let r = Range { lo: -3.0, hi: 5.0 };
        assert_eq!(TableMap::choose(&t, &r), TableMap::IDENTITY);
        // A constant channel has nothing to stretch, and a channel never seen (an empty
        // range) neither.
        let r = Range { lo: 6.0, hi: 6.0 };
        assert_eq!(TableMap::choose(&t, &r), TableMap::IDENTITY);
        assert_eq!(TableMap::choose(&t, &Range::default()), TableMap::IDENTITY);
    }

    #[test]
    fn narrow_channels_are_read_on_the_linear_part() {
        let t = table();
        // On a +6 offset (the ill-conditioned fixture's channels), and in GELU's curved
        // part: both span less than one table step as they are.
        for (lo, hi) in [(5.9995, 6.0005), (0.3, 0.31), (-0.61, -0.6)] {
            assert!(hi - lo < t.s_z);
            let r = Range {
                lo: lo as f32,
                hi: hi as f32,
            };
            let m = TableMap::choose(&t, &r);
            assert_ne!(m, TableMap::IDENTITY, "{lo}..{hi}");
            // The whole calibrated range lands on the linear part, inside the table.
            for x in [f64::from(r.lo), f64::from(r.hi)] {
                let y = m.k * (x + m.off);
                assert!(y >= GELU_LINEAR_FROM - 1e-9 && y <= t.top());
            }
            let (old, new) = (worst(&TableMap::IDENTITY, lo, hi), worst(&m, lo, hi));
            // Dozens of levels instead of one or two: the error falls tenfold or more.
            assert!(new < 0.1 * old, "{lo}..{hi}: {new} vs {old}");
        }
    }
}
