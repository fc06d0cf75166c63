//! A model split over 1–4 cores gives the bytes of one core: every committed example blob,
//! every kernel level the CPU has, with the parts run in reverse order on one thread, at
//! the same time on scoped threads, and on a `Team` of helper threads. Runs on x86_64 and on aarch64 under qemu-user.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::vec;
use std::vec::Vec;

use crate::cores::{Cores, Team};
use crate::kernels::Isa;
use crate::{Error, Model};

static BLOBS: [(&str, &[u8]); 5] = [
    (
        "mnist int8",
        include_bytes!("../examples/mnist/convmixer-mnist-int8.cmx"),
    ),
    (
        "mnist fp16",
        include_bytes!("../examples/mnist/convmixer-mnist-fp16.cmx"),
    ),
    (
        "mnist fp32",
        include_bytes!("../examples/mnist/convmixer-mnist-fp32.cmx"),
    ),
    (
        "mixer lucid int8",
        include_bytes!("../examples/mixer-mnist/mixer-lucid-int8.cmx"),
    ),
    (
        "mixer timm int8",
        include_bytes!("../examples/mixer-mnist/mixer-timm-int8.cmx"),
    ),
];
static IMAGES: &[u8] = include_bytes!("../examples/mnist/heldout-images.idx3-ubyte");

/// `n` parts, run one after another in reverse order; counts the joins of several parts.
struct Reverse {
    n: usize,
    joins: AtomicUsize,
}

impl Cores for Reverse {
    fn count(&self) -> usize {
        self.n
    }
    fn join(&self, tasks: &mut [&mut (dyn FnMut() + Send)]) {
        assert!(tasks.len() <= self.n, "more tasks than cores");
        self.joins.fetch_add(1, Ordering::Relaxed);
        for t in tasks.iter_mut().rev() {
            t();
        }
    }
}

/// `n` parts on scoped threads, all at once.
struct Threads(usize);

impl Cores for Threads {
    fn count(&self) -> usize {
        self.0
    }
    fn join(&self, tasks: &mut [&mut (dyn FnMut() + Send)]) {
        std::thread::scope(|s| {
            for t in tasks.iter_mut() {
                s.spawn(t);
            }
        });
    }
}

fn bits(m: &Model, cores: &dyn Cores, px: &[u8]) -> Vec<u32> {
    let mut arena = vec![0u8; m.arena_len_for(cores.count())];
    let mut out = vec![0f32; usize::from(m.header().classes)];
    m.logits_on(cores, px, &mut arena, &mut out)
        .expect("inference");
    out.iter().map(|v| v.to_bits()).collect()
}

/// [`bits`] on a [`Team`] of `n` served by scoped threads (what `Team::scoped` does).
fn team_bits(m: &Model, n: usize, px: &[u8]) -> Vec<u32> {
    let team = Team::new(n);
    std::thread::scope(|s| {
        for slot in 0..team.helpers() {
            let team = &team;
            s.spawn(move || team.serve(slot, |_| std::thread::yield_now()));
        }
        let out = bits(m, &team, px);
        team.stop();
        out
    })
}

#[test]
fn every_core_count_gives_the_logits_of_one() {
    for (name, blob) in BLOBS {
        for isa in Isa::ALL {
            let Ok(m) = Model::from_bytes(blob).expect("blob").with_isa(isa) else {
                continue;
            };
            let len = m.input_len();
            for i in 0..3 {
                let px = &IMAGES[16 + i * len..16 + (i + 1) * len];
                let one = bits(&m, &crate::cores::OneCore, px);
                for n in 1..=4 {
                    let rev = Reverse {
                        n,
                        joins: AtomicUsize::new(0),
                    };
                    assert_eq!(bits(&m, &rev, px), one, "{name} {isa:?} {n} parts reversed");
                    assert_eq!(bits(&m, &Threads(n), px), one, "{name} {isa:?} {n} threads");
                    assert_eq!(team_bits(&m, n, px), one, "{name} {isa:?} team of {n}");
                    // One core never joins; a ConvMixer on several, int8 or float, on
                    // every ISA, splits its embedding, every depthwise and pointwise
                    // conv, the pool and the head.
                    let depth = usize::from(m.header().depth);
                    let joins = rev.joins.load(Ordering::Relaxed);
                    if n == 1 {
                        assert_eq!(joins, 0, "{name}");
                    } else if name.starts_with("mnist") {
                        assert_eq!(joins, 3 + 2 * depth, "{name} {isa:?} {n} parts");
                    } else {
                        // An MLP-Mixer: the embedding, per block the token MLP and its
                        // LayerNorm, the channel MLP and its LayerNorm, the last
                        // LayerNorm, the pool and the head.
                        assert_eq!(joins, 4 + 4 * depth, "{name} {isa:?} {n} parts");
                    }
                }
            }
        }
    }
}

#[test]
fn the_arena_is_sized_for_the_core_count() {
    let m = Model::from_bytes(BLOBS[0].1).expect("blob");
    let px = &IMAGES[16..16 + m.input_len()];
    let need = m.arena_len_for(4);
    assert!(
        need > m.arena_len(),
        "four parts need more scratch than one"
    );
    let mut arena = vec![0u8; need - 1];
    let mut out = vec![0f32; usize::from(m.header().classes)];
    let got = m.logits_on(&Threads(4), px, &mut arena, &mut out);
    assert_eq!(
        got,
        Err(Error::ArenaTooSmall {
            needed: need,
            got: need - 1
        })
    );
    // More cores than MAX_PARTS use MAX_PARTS parts.
    let many = Reverse {
        n: 64,
        joins: AtomicUsize::new(0),
    };
    assert_eq!(
        m.arena_len_for(64),
        m.arena_len_for(crate::cores::MAX_PARTS)
    );
    assert_eq!(bits(&m, &many, px), bits(&m, &crate::cores::OneCore, px));
}

/// A team joins many times in a row, with fewer tasks than cores, more tasks than cores
/// (the rest run on the caller), and from two threads at once (the second caller runs its
/// own tasks): every task runs exactly once each time.
#[test]
fn a_team_runs_every_task_once() {
    let team = Team::new(3);
    std::thread::scope(|s| {
        for slot in 0..team.helpers() {
            let team = &team;
            s.spawn(move || team.serve(slot, |_| std::hint::spin_loop()));
        }
        let count = |team: &Team, n: usize, rounds: usize| {
            let mut hits = vec![0u32; n];
            for _ in 0..rounds {
                let mut tasks: Vec<_> = hits.iter_mut().map(|h| move || *h += 1).collect();
                let mut refs: Vec<&mut (dyn FnMut() + Send)> = tasks
                    .iter_mut()
                    .map(|t| t as &mut (dyn FnMut() + Send))
                    .collect();
                team.join(&mut refs);
            }
            hits
        };
        std::thread::scope(|inner| {
            let a = inner.spawn(|| count(&team, 3, 500));
            let b = inner.spawn(|| count(&team, 5, 500));
            assert_eq!(a.join().unwrap(), vec![500; 3]);
            assert_eq!(b.join().unwrap(), vec![500; 5]);
        });
        assert_eq!(count(&team, 1, 10), vec![10]);
        assert_eq!(count(&team, 0, 10), Vec::<u32>::new());
        team.stop();
    });
}

/// Wake-ups of [`a_team_wakes_after_every_store_the_other_side_waits_for`]'s team.
static WAKES: AtomicUsize = AtomicUsize::new(0);

/// With `with_wait`, a join that lends tasks wakes the helpers once after filling their
/// slots, each helper wakes the joiner after each task, and `stop` wakes everyone: what a
/// core sleeping in `wfe` needs (bare metal pairs it with `sev`). A join that lends nothing
/// wakes no one.
#[test]
fn a_team_wakes_after_every_store_the_other_side_waits_for() {
    fn wake() {
        WAKES.fetch_add(1, Ordering::SeqCst);
    }
    let team = Team::new(3).with_wait(|_| std::thread::yield_now(), wake);
    std::thread::scope(|s| {
        for slot in 0..team.helpers() {
            let team = &team;
            s.spawn(move || team.serve(slot, |_| std::thread::yield_now()));
        }
        let (mut a, mut b, mut c) = (0, 0, 0);
        for _ in 0..10 {
            team.join(&mut [&mut || a += 1, &mut || b += 1, &mut || c += 1]);
        }
        // 10 joins × (1 after lending + 2 helpers' tasks).
        assert_eq!(WAKES.load(Ordering::SeqCst), 30);
        team.join(&mut [&mut || a += 1]);
        assert_eq!(WAKES.load(Ordering::SeqCst), 30);
        assert_eq!((a, b, c), (11, 10, 10));
        team.stop();
    });
    assert_eq!(WAKES.load(Ordering::SeqCst), 31);
}
