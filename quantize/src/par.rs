//! Image-parallel work whose result does not depend on the number of threads.
//!
//! Every host pass over a set of images (calibration, bias-correction means, SQNR and
//! accuracy measurements) maps each image to a partial result in parallel, on rayon's
//! current pool (`host-tools --threads N` installs a pool of N threads; one thread
//! otherwise means the global pool, every core), and folds the partial results **in
//! image order** on the calling thread. A fold in a fixed order gives the same floats
//! whatever the threads did, so the same blob comes out of 1 or N threads, byte for byte.
//!
//! Images go out in chunks of a few per thread, so at most that many partial results are
//! alive at once (a partial result can be large: a whole layer trace of a 224×224 model).

use rayon::prelude::*;

/// Maps `items` with `map` in parallel and folds the results into `acc` with `fold`, in
/// item order; `done` is called (from any thread) after each item is mapped, e.g. to
/// advance a progress bar.
///
/// ```
/// use convmixer_quantize::par::map_fold;
/// let v: Vec<u64> = (1..=100).collect();
/// let s = map_fold(&v, String::new(), |x| x * x, |mut s, y| { s += &format!("{y},"); s }, &|| {});
/// assert!(s.starts_with("1,4,9,16,"));
/// ```
pub fn map_fold<T: Sync, R: Send, A>(
    items: &[T],
    acc: A,
    map: impl Fn(&T) -> R + Sync,
    mut fold: impl FnMut(A, R) -> A,
    done: &(dyn Fn() + Sync),
) -> A {
    let ok = try_map_fold(
        items,
        acc,
        |x| Ok::<R, std::convert::Infallible>(map(x)),
        |a, r| fold(a, r),
        done,
    );
    match ok {
        Ok(a) => a,
        Err(never) => match never {},
    }
}

/// [`map_fold`] for a fallible `map`: the first error in item order is returned (items
/// after it may or may not have been mapped).
pub fn try_map_fold<T: Sync, R: Send, A, E: Send>(
    items: &[T],
    acc: A,
    map: impl Fn(&T) -> Result<R, E> + Sync,
    mut fold: impl FnMut(A, R) -> A,
    done: &(dyn Fn() + Sync),
) -> Result<A, E> {
    let chunk = 4 * rayon::current_num_threads().max(1);
    let mut acc = acc;
    for part in items.chunks(chunk) {
        let mut out = Vec::with_capacity(part.len());
        part.par_iter()
            .map(|x| {
                let r = map(x);
                done();
                r
            })
            .collect_into_vec(&mut out);
        for r in out {
            acc = fold(acc, r?);
        }
    }
    Ok(acc)
}

/// `map` over `items` in parallel, results in item order.
///
/// ```
/// assert_eq!(convmixer_quantize::par::map(&[1, 2, 3], |x| x * 10), vec![10, 20, 30]);
/// ```
pub fn map<T: Sync, R: Send>(items: &[T], map: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    items.par_iter().map(&map).collect_into_vec(&mut out);
    out
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a `len`-byte scratch buffer kept per thread (a model's
/// arena), so that image after image reuses it instead of allocating and freeing it: for a
/// large arena every allocation is an `mmap` and every free an `munmap`, whose TLB
/// shoot-downs stall the other threads. The buffer's contents are whatever the last user
/// left (the runtime's arena needs no zeroing). Not re-entrant: `f` must not call it.
///
/// ```
/// let n = convmixer_quantize::par::with_scratch(1000, |a| a.len());
/// assert_eq!(n, 1000);
/// ```
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0);
        }
        f(&mut s[..len])
    })
}
