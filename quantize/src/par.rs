//! Image-parallel work whose result does not depend on the number of threads.
//!
//! Every host pass over a set of images (calibration, bias-correction means, SQNR and
//! accuracy measurements) maps each image to a partial result in parallel, on rayon's
//! current pool (`host-tools --threads N` installs a pool of N threads; one thread
//! otherwise means the global pool, every core), and folds the partial results **in
//! image order** on the calling thread. A fold in a fixed order gives the same floats
//! whatever the threads did, so the same blob comes out of 1 or N threads, byte for byte.
//!
//! Images go out one at a time to whichever thread is free, at most a few per thread ahead
//! of the fold, so at most that many partial results are alive at once (a partial result
//! can be large: a whole layer trace of a 224×224 model).

use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};

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
///
/// The pool's threads take items one at a time, as each finishes its last, up to
/// `4 × threads` items ahead of the fold (so at most that many partial results wait), and
/// the calling thread folds each result as soon as the results before it are folded: no
/// thread waits for a slower one between groups of items. The calling thread maps items
/// too where it is one of the pool's (the pool then has one thread fewer to lend). A panic
/// in `map` stops the others taking items and goes on from here.
pub fn try_map_fold<T: Sync, R: Send, A, E: Send>(
    items: &[T],
    acc: A,
    map: impl Fn(&T) -> Result<R, E> + Sync,
    mut fold: impl FnMut(A, R) -> A,
    done: &(dyn Fn() + Sync),
) -> Result<A, E> {
    let threads = rayon::current_num_threads().max(1);
    let in_pool = rayon::current_thread_index().is_some();
    let workers = if in_pool { threads - 1 } else { threads };
    let mut acc = acc;
    if workers == 0 || items.len() < 2 {
        for x in items {
            let r = map(x);
            done();
            acc = fold(acc, r?);
        }
        return Ok(acc);
    }
    let window = 4 * threads;
    let order = Order {
        state: Mutex::new(State {
            next: 0,
            folded: 0,
            ready: VecDeque::new(),
            stop: false,
        }),
        cv: Condvar::new(),
    };
    // Maps item i and files its result (a panic caught, to be re-raised by the fold).
    let run = |i: usize| {
        let r = items
            .get(i)
            .map(|x| catch_unwind(AssertUnwindSafe(|| map(x))));
        done();
        let mut st = order.lock();
        let k = i - st.folded; // i ≥ folded: item i is not folded before it is filed
        if let (Some(slot), Some(r)) = (st.ready.get_mut(k), r) {
            *slot = Some(r);
        }
        order.cv.notify_all();
    };
    rayon::in_place_scope(|s| {
        for _ in 0..workers {
            s.spawn(|_| loop {
                let mut st = order.lock();
                let i = loop {
                    if st.stop || st.next >= items.len() {
                        return;
                    }
                    if let Some(i) = st.claim(items.len(), window) {
                        break i;
                    }
                    st = order.wait(st);
                };
                drop(st);
                run(i);
            });
        }
        loop {
            let mut st = order.lock();
            if matches!(st.ready.front(), Some(Some(_))) {
                let r = st.ready.pop_front().flatten();
                st.folded += 1;
                order.cv.notify_all();
                drop(st);
                match r {
                    Some(Ok(Ok(v))) => acc = fold(acc, v),
                    Some(Ok(Err(e))) => {
                        order.stop();
                        return Err(e);
                    }
                    Some(Err(panic)) => {
                        order.stop();
                        resume_unwind(panic);
                    }
                    None => {} // not reached: the front was filed
                }
                continue;
            }
            if st.folded >= items.len() {
                return Ok(acc);
            }
            let mine = if in_pool {
                st.claim(items.len(), window)
            } else {
                None
            };
            match mine {
                Some(i) => {
                    drop(st);
                    run(i);
                }
                None => drop(order.wait(st)),
            }
        }
    })
}

/// The shared state of [`try_map_fold`]'s threads: a mutex and its condition variable
/// (notified whenever a result is filed or folded).
struct Order<R, E> {
    state: Mutex<State<R, E>>,
    cv: Condvar,
}

/// Items handed out (`next`), folded (`folded`), and the results of items `folded..next`
/// in item order (`None` while being mapped).
struct State<R, E> {
    next: usize,
    folded: usize,
    ready: VecDeque<Option<std::thread::Result<Result<R, E>>>>,
    stop: bool,
}

impl<R, E> Order<R, E> {
    /// The state (a panic elsewhere never leaves it half-changed: no code that can panic
    /// runs under the lock).
    fn lock(&self) -> MutexGuard<'_, State<R, E>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State<R, E>>) -> MutexGuard<'a, State<R, E>> {
        self.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    /// No more items handed out.
    fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }
}

impl<R, E> State<R, E> {
    /// The next item to map, if any is left and the window ahead of the fold has room.
    fn claim(&mut self, len: usize, window: usize) -> Option<usize> {
        if self.stop || self.next >= len || self.next >= self.folded + window {
            return None;
        }
        self.ready.push_back(None);
        self.next += 1;
        Some(self.next - 1)
    }
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
