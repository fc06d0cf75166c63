//! Several cores for one inference, lent by the caller: the runtime starts no threads of
//! its own. A [`Cores`] runs a handful of tasks at once and returns when all are done
//! (fork-join); the model splits each layer into that many tasks, each writing a disjoint
//! part of the activations, and joins between layers. Every output is computed by the
//! same arithmetic in the same order whatever the split, so the logits are bit-identical
//! for every core count.
//!
//! [`OneCore`] runs the tasks one after another (what [`Model::logits`](crate::Model::logits)
//! uses); [`Team`] hands them to other cores or threads that wait in [`Team::serve`]
//! (secondary cores on bare metal, or `std::thread::scope` threads: `Team::scoped` with the
//! `std` feature).
//!
//! Safety argument: the trait is safe to implement. Each task is a `&mut (dyn FnMut() +
//! Send)` borrowed for the duration of [`Cores::join`]; an implementation written in safe
//! Rust can hand the borrows to other threads only through scoped APIs
//! (`std::thread::scope`) that return after every task has finished, so
//! the borrows cannot outlive the call. An implementation that passes a task to another
//! core with `unsafe` code (a raw pointer in a mailbox) must itself wait for that core to
//! finish the task before `join` returns: that wait is the whole of its safety argument
//! and lives beside its `unsafe` block ([`Team`]'s is in `team.rs`).

#[allow(unsafe_code)]
mod team;
pub use team::Team;

/// The most parts a layer is split into (cores beyond this many stay idle).
pub const MAX_PARTS: usize = 8;

/// A fork-join over the caller's cores.
///
/// ```
/// use convmixer_edge::cores::{Cores, OneCore};
/// let mut hits = [0u32; 3];
/// {
///     let [a, b, c] = &mut hits;
///     let (mut ta, mut tb, mut tc) = (|| *a += 1, || *b += 2, || *c += 3);
///     OneCore.join(&mut [&mut ta, &mut tb, &mut tc]);
/// }
/// assert_eq!(hits, [1, 2, 3]);
/// assert_eq!(OneCore.count(), 1);
/// ```
pub trait Cores: Sync {
    /// How many tasks [`Cores::join`] runs at once (at least 1): the model splits each
    /// layer into this many parts, at most [`MAX_PARTS`].
    fn count(&self) -> usize;

    /// Runs every task exactly once, possibly at the same time as the others, and returns
    /// after all have finished. The model never passes more than [`Cores::count`] tasks.
    fn join(&self, tasks: &mut [&mut (dyn FnMut() + Send)]);
}

/// The calling core alone: the tasks run one after another. Costs nothing over a plain
/// single-core run (the model does not split layers for one part).
///
/// ```
/// use convmixer_edge::cores::{Cores, OneCore};
/// let mut n = 0;
/// OneCore.join(&mut [&mut || n += 1]);
/// assert_eq!(n, 1);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct OneCore;

impl Cores for OneCore {
    fn count(&self) -> usize {
        1
    }

    fn join(&self, tasks: &mut [&mut (dyn FnMut() + Send)]) {
        for t in tasks {
            t();
        }
    }
}

/// Runs `f` on every item, one task each, through `cores` (at most [`MAX_PARTS`] items;
/// any beyond are dropped, which the model's splits never produce).
pub(crate) fn fork<C, T, F>(cores: &C, items: impl Iterator<Item = T>, f: F)
where
    C: Cores + ?Sized,
    T: Send,
    F: Fn(T) + Sync,
{
    let f = &f;
    let mut tasks: heapless::Vec<_, MAX_PARTS> = heapless::Vec::new();
    for item in items.take(MAX_PARTS) {
        let mut item = Some(item);
        // Cannot fail: at most MAX_PARTS items.
        let _ = tasks.push(move || {
            if let Some(x) = item.take() {
                f(x)
            }
        });
    }
    let mut refs: heapless::Vec<&mut (dyn FnMut() + Send), MAX_PARTS> = heapless::Vec::new();
    for t in tasks.iter_mut() {
        let _ = refs.push(t);
    }
    match refs.as_mut_slice() {
        [] => {}
        [one] => one(),
        all => cores.join(all),
    }
}

/// Splits `n` units into `parts` consecutive ranges whose sizes differ by at most one
/// (the first ones larger): the bounds `0 = b₀ ≤ b₁ ≤ … ≤ b_parts = n`.
pub(crate) fn bounds(n: usize, parts: usize) -> impl Iterator<Item = core::ops::Range<usize>> {
    let parts = parts.max(1);
    let (q, r) = (n / parts, n % parts);
    let at = move |i: usize| i * q + i.min(r);
    (0..parts).map(move |i| at(i)..at(i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_cover_everything_evenly() {
        for n in 0..40 {
            for parts in 1..=MAX_PARTS {
                let b: std::vec::Vec<_> = bounds(n, parts).collect();
                assert_eq!(b.len(), parts);
                assert_eq!(b[0].start, 0);
                assert_eq!(b[parts - 1].end, n);
                assert!(b.windows(2).all(|w| w[0].end == w[1].start));
                let sizes: std::vec::Vec<_> = b.iter().map(|r| r.len()).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{n} in {parts}: {sizes:?}");
            }
        }
    }

    #[test]
    fn fork_runs_each_item_once() {
        let mut seen = [0u8; 5];
        fork(&OneCore, seen.iter_mut().enumerate(), |(i, s)| {
            *s += i as u8 + 1
        });
        assert_eq!(seen, [1, 2, 3, 4, 5]);
    }
}
