//! The other cores: started at boot, each on a stack of its own with the same translation
//! tables, MMU, caches and `FPCR` as core 0, then serving a [`Team`] that core 0 lends to
//! `Model::classify_on`: each layer's parts run on every core, with nothing shared but the
//! team's atomic slots and the parts the runtime hands out.
//!
//! 1. Core 0 calls [`start`]: [`board::start_core`] sends each core the firmware is built
//!    for (1 up to [`CORES`]` − 1`; `CMX_CORES`) to `cmx_secondary_entry` (below): PSCI `CPU_ON` on virt, the spin
//!    table on a Raspberry Pi.
//! 2. The entry code does what aarch64-rt's own entry does for core 0 — its identity map
//!    with the MMU and caches on, FP/SIMD untrapped (also at EL2 on a Raspberry Pi), the
//!    exception vector — on the core's stack in [`STACKS`], and calls [`secondary_main`]:
//!    [`board::init_core`] (`FPCR`, the Pi 3's fine map), then it takes the next helper
//!    slot and tells core 0 it is there.
//! 3. Core 0 waits up to [`ARRIVAL_MS`] for them, then picks the team of the cores that
//!    came (a core that did not come is simply not used) and publishes it; each helper then
//!    serves it, sleeping in `wfe` between tasks (`Team::with_wait`: `sev` wakes it).
//!
//! A core that arrives after core 0 has chosen gets a slot outside the team and parks.

use core::sync::atomic::{AtomicUsize, Ordering};

use convmixer_edge::cores::Team;

use crate::board::{self, Static};
use crate::timer::GenericTimer;
use crate::CORES;

/// Cores of a Raspberry Pi 3, 4 or 5 (and of `qemu -M virt -smp 4`).
pub const MAX_CORES: usize = 4;

/// Each other core's stack, in bytes: as large as core 0's.
pub const STACK_BYTES: usize = board::STACK_PAGES * 4096;

/// How long core 0 waits for the other cores to arrive.
pub const ARRIVAL_MS: u64 = 100;

/// The other cores' stacks, one per core the firmware is built for ([`CORES`]): core `c`
/// (1..) runs on `[c − 1]`. In `.bss`, so zero at start: [`stack_high_water`] reads how
/// deep each went.
#[repr(C, align(4096))]
struct Stacks([[u8; STACK_BYTES]; CORES - 1]);

static STACKS: Static<Stacks> = Static::new(Stacks([[0; STACK_BYTES]; CORES - 1]));

/// Helper slots taken so far (each arriving core takes the next).
static ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// The number of cores in the chosen team (0 until core 0 has chosen).
static CHOSEN: AtomicUsize = AtomicUsize::new(0);

/// A team for each core count: helpers wait in `wfe`, every store the other side waits
/// for is followed by `sev`.
static TEAMS: [Team; MAX_CORES] = [
    Team::new(1).with_wait(board::wait_for_event, board::send_event),
    Team::new(2).with_wait(board::wait_for_event, board::send_event),
    Team::new(3).with_wait(board::wait_for_event, board::send_event),
    Team::new(4).with_wait(board::wait_for_event, board::send_event),
];

// The other cores' entry (MMU off, as out of reset; x0 is PSCI's context or 0 from the spin
// table, unused): what aarch64-rt's `entry` does for core 0, minus `.bss` (already zeroed),
// on this core's stack: `STACKS` + core × STACK_BYTES is the top of `STACKS[core − 1]`.
// Core 0, or a core the firmware has no stack for (`CORES` or more), parks.
core::arch::global_asm!(
    ".section .text.cmx_secondary_entry, \"ax\"",
    ".global cmx_secondary_entry",
    ".balign 4",
    "cmx_secondary_entry:",
    // EL2 (Raspberry Pi): do not trap FP/SIMD (CPTR_EL2.TFP), as the armstub does for core 0.
    ".if {el2}",
    "mrs x9, cptr_el2",
    "bic x9, x9, #(1 << 10)",
    "msr cptr_el2, x9",
    "isb",
    ".endif",
    "bl enable_mmu",
    "mrs x30, cpacr_el1",
    "orr x30, x30, #(0x3 << 20)",
    "msr cpacr_el1, x30",
    "isb",
    "mrs x0, mpidr_el1",
    "and x0, x0, #0xff",
    "cbz x0, 2f",
    "cmp x0, #{cores}",
    "b.hs 2f",
    "adrp x1, {stacks}",
    "add x1, x1, :lo12:{stacks}",
    "mov x2, #{stack_bytes}",
    "madd x1, x0, x2, x1",
    "mov sp, x1",
    "bl {set_vector}",
    "b {main}",
    "2:",
    "wfe",
    "b 2b",
    el2 = const if cfg!(feature = "virt") { 0 } else { 1 },
    cores = const CORES,
    stacks = sym STACKS,
    stack_bytes = const STACK_BYTES,
    set_vector = sym aarch64_rt::set_exception_vector,
    main = sym secondary_main,
);

extern "C" {
    /// The entry code above.
    fn cmx_secondary_entry();
}

/// A helper core, after the entry code: set up, report, serve the chosen team, park.
extern "C" fn secondary_main() -> ! {
    board::init_core();
    let slot = ARRIVED.fetch_add(1, Ordering::AcqRel);
    board::send_event();
    let cores = loop {
        match CHOSEN.load(Ordering::Acquire) {
            0 => board::wait_for_event(0),
            n => break n,
        }
    };
    if let Some(team) = TEAMS.get(cores - 1) {
        team.serve(slot, board::wait_for_event);
    }
    loop {
        board::wait_for_event(0);
    }
}

/// Starts cores 1 up to [`CORES`]` − 1`, waits up to [`ARRIVAL_MS`] for them, and returns
/// the team of core 0 and the cores that came. Call once, on core 0, after
/// [`board::init`].
pub fn start(timer: &GenericTimer) -> &'static Team {
    let wanted = CORES.clamp(1, MAX_CORES);
    let mut started = 0;
    for core in 1..wanted {
        match board::start_core(core, cmx_secondary_entry as *const () as usize) {
            Ok(()) => started += 1,
            Err(e) => defmt::warn!("core {=usize} did not start (PSCI status {=i64})", core, e),
        }
    }
    let t0 = timer.ticks();
    while ARRIVED.load(Ordering::Acquire) < started
        && timer.micros(timer.ticks().wrapping_sub(t0)) < ARRIVAL_MS * 1000
    {
        core::hint::spin_loop();
    }
    // The slots taken so far are the team's helpers; a later arrival parks.
    let helpers = ARRIVED.load(Ordering::Acquire).min(wanted - 1);
    CHOSEN.store(helpers + 1, Ordering::Release);
    board::send_event();
    &TEAMS[helpers]
}

/// Each other core's stack high-water mark in bytes (`[c − 1]` for core `c`; 0 for a core
/// that never ran).
pub fn stack_high_water() -> [usize; CORES - 1] {
    let base = STACKS.as_ptr() as usize;
    core::array::from_fn(|i| {
        board::high_water(base + i * STACK_BYTES, base + (i + 1) * STACK_BYTES)
    })
}
