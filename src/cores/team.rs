//! [`Team`]: a fork-join over helper cores (or threads) that wait for work in
//! [`Team::serve`], with nothing but atomics — the same code on bare metal (secondary cores
//! started by the firmware) and on Linux (`std::thread::scope` threads, [`Team::scoped`]).
//!
//! Protocol: each helper owns one slot, an atomic pointer that is null while it has no
//! work. [`Team::join`] stores a pointer to task `i + 1` in slot `i` (release), runs task
//! 0 itself, then waits until every slot it filled is null again. A helper that finds its
//! slot non-null (acquire) runs the task and stores null (release) when the task has
//! returned. No locks; one atomic store and load per task and side. Each side calls the
//! team's `wake` after its stores, for a side that sleeps while it waits (`wfe` on bare
//! metal, woken by `sev`; [`Team::with_wait`]).
//!
//! Safety argument (the one `unsafe` block, in [`Team::serve`]): the pointer in a slot
//! points at a `&mut (dyn FnMut() + Send)` in the slice that `join` borrows mutably for
//! its whole call. `join` does not return — and, if task 0 panics, does not unwind past its
//! frame — until every slot it filled is null again (the `Pending` guard's `Drop` waits),
//! and a helper nulls its slot only after its task has returned; so the borrow outlives
//! every use of the pointer. Each slot gets a different task and only its own helper reads
//! it, so no task is run twice or by two cores at once (the `&mut` stays exclusive). The
//! `busy` flag makes a second, concurrent `join` on the same team run its tasks on its own
//! caller instead of touching the slots. Tasks are `Send`, so running them on a helper is
//! allowed.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use super::{Cores, MAX_PARTS};

/// A task as `join` lends it: the pointee of a slot.
type Task<'t> = &'t mut (dyn FnMut() + Send);

/// Up to [`MAX_PARTS`]` − 1` helpers and the calling core.
///
/// ```
/// use convmixer_edge::cores::{Cores, Team};
/// // One helper thread serving the team while this thread joins.
/// let team = Team::new(2);
/// let (mut a, mut b) = (0, 0);
/// std::thread::scope(|s| {
///     s.spawn(|| team.serve(0, |_| std::hint::spin_loop()));
///     team.join(&mut [&mut || a = 1, &mut || b = 2]);
///     team.stop();
/// });
/// assert_eq!((a, b, team.count()), (1, 2, 2));
/// ```
#[derive(Debug)]
pub struct Team {
    helpers: usize,
    slots: [AtomicPtr<()>; MAX_PARTS - 1],
    busy: AtomicBool,
    stop: AtomicBool,
    wait: fn(u32),
    wake: fn(),
}

/// `core::hint::spin_loop`, whatever the count: [`Team::new`]'s way of waiting.
fn spin(_: u32) {
    core::hint::spin_loop()
}

/// Nothing: a spinning or yielding side needs no wake-up.
fn nothing() {}

impl Team {
    /// A team of `cores` cores (clamped to `1..=`[`MAX_PARTS`]): the caller of
    /// [`Team::join`] and `cores − 1` helpers, which must each run [`Team::serve`] with
    /// their own slot `0..cores − 1`.
    ///
    /// ```
    /// assert_eq!(convmixer_edge::cores::Team::new(64).helpers(), 7);
    /// ```
    pub const fn new(cores: usize) -> Self {
        let cores = if cores < 1 {
            1
        } else if cores > MAX_PARTS {
            MAX_PARTS
        } else {
            cores
        };
        Team {
            helpers: cores - 1,
            slots: [const { AtomicPtr::new(null_mut()) }; MAX_PARTS - 1],
            busy: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wait: spin,
            wake: nothing,
        }
    }

    /// The same team, with `join` calling `wait(n)` while it waits for the helpers (`n`:
    /// calls so far in this wait) instead of spinning, and both sides calling `wake()`
    /// after the stores the other side waits for: `wfe` and `sev` on bare metal (an event
    /// sent before the `wfe` is not lost: it stays pending), or a yield and nothing where
    /// the threads share their cores with other programs.
    ///
    /// ```
    /// let team = convmixer_edge::cores::Team::new(2).with_wait(|_| std::thread::yield_now(), || {});
    /// ```
    pub const fn with_wait(mut self, wait: fn(u32), wake: fn()) -> Self {
        self.wait = wait;
        self.wake = wake;
        self
    }

    /// How many helpers serve the team.
    ///
    /// ```
    /// assert_eq!(convmixer_edge::cores::Team::new(4).helpers(), 3);
    /// ```
    pub fn helpers(&self) -> usize {
        self.helpers
    }

    /// The loop of helper `slot`: runs each task [`Team::join`] gives it, calling
    /// `idle(n)` while it waits (`n`: calls since the last task; spin, `wfe`, or yield)
    /// until [`Team::stop`]. A `slot` outside `0..helpers()` returns at once.
    ///
    /// ```
    /// let team = convmixer_edge::cores::Team::new(2);
    /// team.stop();
    /// team.serve(0, |_| {}); // returns: the team is stopped
    /// ```
    pub fn serve(&self, slot: usize, mut idle: impl FnMut(u32)) {
        let Some(cell) = self.slots.get(slot).filter(|_| slot < self.helpers) else {
            return;
        };
        let mut waited = 0u32;
        loop {
            let p = cell.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: the module header: `p` points at a task `join` lends this slot
                // alone, alive until this store of null.
                unsafe { (*p.cast::<Task<'_>>())() };
                cell.store(null_mut(), Ordering::Release);
                (self.wake)();
                waited = 0;
            } else if self.stop.load(Ordering::Acquire) {
                return;
            } else {
                idle(waited);
                waited = waited.saturating_add(1);
            }
        }
    }

    /// Makes every [`Team::serve`] return once its current task is done.
    ///
    /// ```
    /// let team = convmixer_edge::cores::Team::new(1);
    /// team.stop();
    /// ```
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
    }
}

/// Waits, also while unwinding, until the first `filled` slots are null again.
struct Pending<'t> {
    team: &'t Team,
    filled: usize,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut n = 0u32;
        for cell in self.team.slots.iter().take(self.filled) {
            while !cell.load(Ordering::Acquire).is_null() {
                (self.team.wait)(n);
                n = n.saturating_add(1);
            }
        }
        self.team.busy.store(false, Ordering::Release);
    }
}

impl Cores for Team {
    fn count(&self) -> usize {
        self.helpers + 1
    }

    fn join(&self, tasks: &mut [&mut (dyn FnMut() + Send)]) {
        let free = self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if !free {
            // Another join is using the slots: run everything here.
            for t in tasks {
                t();
            }
            return;
        }
        let Some((first, rest)) = tasks.split_first_mut() else {
            self.busy.store(false, Ordering::Release);
            return;
        };
        let lent = rest.len().min(self.helpers);
        let (lend, own) = rest.split_at_mut(lent);
        let pending = Pending {
            team: self,
            filled: lent,
        };
        for (cell, task) in self.slots.iter().zip(lend.iter_mut()) {
            cell.store((task as *mut Task<'_>).cast(), Ordering::Release);
        }
        if lent > 0 {
            (self.wake)();
        }
        first();
        for t in own {
            t();
        }
        drop(pending);
    }
}

#[cfg(feature = "std")]
impl Team {
    /// Runs `f` with a team of `threads` cores: the calling thread and `threads − 1`
    /// `std::thread::scope` threads serving it, which stop when `f` returns or panics. Both
    /// sides wait by spinning briefly, then yielding.
    ///
    /// ```
    /// use convmixer_edge::cores::{Cores, Team};
    /// let n = Team::scoped(3, |team| team.count());
    /// assert_eq!(n, 3);
    /// ```
    pub fn scoped<R>(threads: usize, f: impl FnOnce(&Team) -> R) -> R {
        /// Stops the team when dropped (`f` returned or unwound).
        struct Stop<'t>(&'t Team);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        /// Spin a while (a layer's parts finish within microseconds of each other), then
        /// yield the core (the thread may share it with other programs).
        fn wait(n: u32) {
            if n < 20_000 {
                core::hint::spin_loop()
            } else {
                std::thread::yield_now()
            }
        }
        let team = Team::new(threads).with_wait(wait, || {});
        std::thread::scope(|s| {
            for slot in 0..team.helpers {
                let team = &team;
                s.spawn(move || team.serve(slot, wait));
            }
            let _stop = Stop(&team);
            f(&team)
        })
    }
}
