//! The input means of bias correction, for both networks: per layer, the mean of each
//! input its weights multiply, over the calibration images.

use crate::fold::Folded;
use crate::forward::forward_layers;
use crate::par::map_fold;

/// The mean (over the calibration images and every output position) of each input a
/// layer's weights multiply, indexed like the weights' input index: embedding per patch tap
/// `(ky·p + kx)·c + ci` (raw pixels), depthwise per `(ky·k + kx)·dim + ch` (zero outside the
/// grid, like the padding), pointwise per input channel. Bias correction uses them.
///
/// Each image's sums are taken in parallel and added in image order ([`crate::par`]), so
/// the means do not depend on the number of threads.
pub fn input_means<I: AsRef<[u8]> + Sync>(f: &Folded, images: &[I]) -> Vec<Vec<f64>> {
    let (ht, wt) = f.grid();
    let (dim, p, c, k) = (f.dim, f.patch, f.in_c, f.kernel);
    let tokens = ht * wt;
    let pad = k.saturating_sub(1) / 2;
    // The sums a tap's input takes over every output position: a rectangle of the input
    // grid (rows y0..y1, columns x0..x1) per tap offset.
    let window = |kk: usize, len: usize| {
        let lo = kk.saturating_sub(pad);
        let hi = (len + kk).saturating_sub(pad).min(len);
        (lo, hi.max(lo))
    };
    let one_image = |img: &I| -> Vec<Vec<f64>> {
        let img = img.as_ref();
        let mut sums = Vec::with_capacity(f.conv_layers());
        sums.push(patch_sums(img, (f.in_w, c), p, (ht, wt)));
        let mut prev: Vec<f32> = Vec::new();
        forward_layers(f, img, |l, v| {
            if l % 2 == 0 && l + 1 < f.conv_layers() {
                // The next depthwise layer's input: integral image of this output, so that
                // each tap's rectangle sums in O(1) per channel.
                prev = v.out.to_vec();
            }
            if l % 2 == 1 {
                // Depthwise: the previous layer's output at each tap's offset (0 outside).
                let mut integral = vec![0f64; (ht + 1) * (wt + 1) * dim];
                for y in 0..ht {
                    for x in 0..wt {
                        for ch in 0..dim {
                            let at = |yy: usize, xx: usize| (yy * (wt + 1) + xx) * dim + ch;
                            integral[at(y + 1, x + 1)] = f64::from(prev[(y * wt + x) * dim + ch])
                                + integral[at(y, x + 1)]
                                + integral[at(y + 1, x)]
                                - integral[at(y, x)];
                        }
                    }
                }
                let mut d = vec![0f64; k * k * dim];
                for ky in 0..k {
                    let (y0, y1) = window(ky, ht);
                    for kx in 0..k {
                        let (x0, x1) = window(kx, wt);
                        for ch in 0..dim {
                            let at =
                                |yy: usize, xx: usize| integral[(yy * (wt + 1) + xx) * dim + ch];
                            d[(ky * k + kx) * dim + ch] =
                                at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0);
                        }
                    }
                }
                sums.push(d);
                // Pointwise: this layer's output (residual included) per channel.
                let mut m = vec![0f64; dim];
                for row in v.out.chunks_exact(dim.max(1)) {
                    for (a, b) in m.iter_mut().zip(row) {
                        *a += f64::from(*b);
                    }
                }
                sums.push(m);
            }
        });
        sums
    };
    let n = vec![(images.len().max(1) * tokens) as f64; f.conv_layers()];
    means_of(images, one_image, &n)
}

/// The sums over every patch of a `(ht, wt)` grid of `p × p` patches of the raw HWC image
/// `img` (`in_w` pixels wide, `c` channels), per patch tap `(ky·p + kx)·c + ci`: what each
/// embedding weight multiplies, summed over the tokens (bias correction, both networks).
pub(crate) fn patch_sums(
    img: &[u8],
    (in_w, c): (usize, usize),
    p: usize,
    (ht, wt): (usize, usize),
) -> Vec<f64> {
    let mut e = vec![0f64; p * p * c];
    for ty in 0..ht {
        for tx in 0..wt {
            for ky in 0..p {
                let row = ((ty * p + ky) * in_w + tx * p) * c;
                for (s, &v) in e[ky * p * c..(ky + 1) * p * c]
                    .iter_mut()
                    .zip(&img[row..row + p * c])
                {
                    *s += f64::from(v);
                }
            }
        }
    }
    e
}

/// Per-layer input means of either network: each image's per-layer sums (`one_image`) in
/// parallel, added in image order ([`crate::par`]: the same means from any number of
/// threads), then layer `l`'s divided by `counts[l]` (its rows over all the images).
pub(crate) fn means_of<I: AsRef<[u8]> + Sync>(
    images: &[I],
    one_image: impl Fn(&I) -> Vec<Vec<f64>> + Sync,
    counts: &[f64],
) -> Vec<Vec<f64>> {
    let total = map_fold(
        images,
        Vec::<Vec<f64>>::new(),
        one_image,
        |mut acc, s| {
            if acc.is_empty() {
                return s;
            }
            for (a, b) in acc.iter_mut().zip(&s) {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            }
            acc
        },
        &|| {},
    );
    total
        .into_iter()
        .zip(counts)
        .map(|(v, &n)| v.into_iter().map(|x| x / n.max(1.0)).collect())
        .collect()
}
