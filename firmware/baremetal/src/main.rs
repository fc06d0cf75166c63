//! `convmixer-fw`: bare-metal Cortex-A firmware that classifies images with a convmixer-edge
//! model blob compiled into the image and reports over defmt on the PL011 UART.
//!
//! Start-up is `aarch64-rt`'s (stack, `.bss`, FP/SIMD at EL1, exception vectors, an identity
//! map with the MMU and caches on: NEON needs normal, cacheable memory on real boards). At
//! EL2 (Raspberry Pi) the FP trap `CPTR_EL2.TFP` is the boot firmware's: the Pi's armstub
//! clears it before jumping to `kernel8.img` (aarch64-rt only writes `CPACR_EL1`). Then:
//!
//! 1. [`board::init`] finishes the memory map where 1 GiB blocks are too coarse (Pi 3) and
//!    routes the UART pins (Raspberry Pi); [`serial::init`] brings up the PL011 behind
//!    `embedded_io::Write`, which the defmt logger writes its frames to.
//! 2. The model blob (`CMX_MODEL` at build time, see `build.rs`) is validated by
//!    `Model::from_bytes`; a rejected blob is reported and the firmware exits with failure.
//! 3. [`smp::start`] starts the other cores (`CMX_CORES` at build time, default 4) and
//!    returns the team of those that came; each layer then runs on all of them
//!    (`Model::classify_on`).
//! 4. Each compiled-in image (`CMX_IMAGES`) is classified into a static arena sized from
//!    `Model::arena_len_for(CORES)` at build time — no heap anywhere — with the generic
//!    timer's ticks per inference; the LED blinks once per classification. Then the log
//!    gives every core's stack high-water mark.
//! 5. On a real board the firmware then classifies raw images received on the UART
//!    (`INPUT_LEN` bytes each) forever; with the `semihosting` feature (qemu) it exits with
//!    status 0, or 1 after any error.
#![no_std]
#![no_main]

mod board;
mod serial;
mod smp;
mod timer;

use convmixer_edge::cores::{Cores, Team};
use convmixer_edge::{include_blob, Model};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;

include!(concat!(env!("OUT_DIR"), "/config.rs"));

aarch64_rt::entry!(main, { board::STACK_PAGES });

/// The compiled-in test images: raw HWC `u8`, [`INPUT_LEN`] bytes each.
static IMAGES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/images.bin"));

/// Scratch for inference: exactly what the embedded model asks for on [`CORES`] cores
/// (`Model::arena_len_for`; fewer cores need no more).
static ARENA: board::Static<[u8; ARENA_LEN]> = board::Static::new([0; ARENA_LEN]);

/// One input image received on the UART.
#[cfg(not(feature = "semihosting"))]
static INPUT: board::Static<[u8; INPUT_LEN]> = board::Static::new([0; INPUT_LEN]);

fn main(_x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    board::park_secondary_cores();
    board::clear_free_stack();
    board::init();
    serial::init();
    let ok = run();
    board::exit(ok)
}

/// Everything after start-up; false after any error (already reported).
fn run() -> bool {
    defmt::info!(
        "convmixer-fw {=str} on {=str}, EL{=u8}",
        env!("CARGO_PKG_VERSION"),
        board::NAME,
        board::current_el()
    );
    let blob: &'static [u8] = include_blob!(concat!(env!("OUT_DIR"), "/model.cmx"));
    let model = match Model::from_bytes(blob) {
        Ok(m) => m,
        Err(e) => {
            defmt::error!(
                "model blob rejected ({=usize} bytes): {}",
                blob.len(),
                defmt::Display2Format(&e)
            );
            return false;
        }
    };
    let h = *model.header();
    defmt::info!(
        "model: {=u32}x{=u32}x{=u32} input, dim {=u32}, depth {=u32}, kernel {=u32}, patch {=u32}, {=u16} classes, {}, {}; kernels {}; blob {=usize} B, arena {=usize} B",
        u32::from(h.in_h),
        u32::from(h.in_w),
        u32::from(h.in_c),
        u32::from(h.dim),
        u32::from(h.depth),
        u32::from(h.kernel),
        u32::from(h.patch),
        h.classes,
        h.precision,
        h.activation,
        model.isa(),
        blob.len(),
        model.arena_len()
    );
    // SAFETY: main runs once, on core 0; nothing else borrows the arena (the runtime
    // lends disjoint parts of it to the other cores' tasks within each call).
    let arena: &mut [u8] = unsafe { ARENA.get() };
    let mut timer = timer::GenericTimer::new();
    let team = smp::start(&timer);
    defmt::info!(
        "cores: {=usize} of {=usize} requested ({=usize} on the board at most)",
        team.count(),
        CORES,
        smp::MAX_CORES
    );
    if arena.len() < model.arena_len_for(team.count()) || model.input_len() != INPUT_LEN {
        defmt::error!("build mismatch: the static arena or input size does not fit the model");
        return false;
    }
    let mut led = board::led();
    let mut count = 0usize;
    for (i, image) in IMAGES.chunks_exact(INPUT_LEN).enumerate() {
        if !classify(&model, team, i, image, arena, &mut timer, &mut led) {
            return false;
        }
        count += 1;
    }
    defmt::info!(
        "done: {=usize} compiled-in images classified on {=usize} cores",
        count,
        team.count()
    );
    defmt::info!(
        "stack high-water mark: core 0 {=usize} of {=usize} B",
        board::stack_used(),
        board::STACK_PAGES * 4096
    );
    for (i, used) in smp::stack_high_water()
        .into_iter()
        .enumerate()
        .take(team.count() - 1)
    {
        defmt::info!(
            "stack high-water mark: core {=usize} {=usize} of {=usize} B",
            i + 1,
            used,
            smp::STACK_BYTES
        );
    }
    #[cfg(not(feature = "semihosting"))]
    {
        defmt::info!(
            "now send images on the UART: {=usize} raw bytes each",
            INPUT_LEN
        );
        // SAFETY: as for the arena.
        let input: &mut [u8] = unsafe { INPUT.get() };
        let mut i = count;
        loop {
            if !serial::read_exact(input) {
                defmt::error!("UART receive error; waiting for the next image");
                continue;
            }
            classify(&model, team, i, input, arena, &mut timer, &mut led);
            i += 1;
        }
    }
    #[allow(unreachable_code)]
    true
}

/// Classifies one image and reports it: `prediction image=I class=C …` (the tests read
/// these lines), with the generic timer's ticks and microseconds for the inference.
fn classify(
    model: &Model<'_>,
    team: &Team,
    i: usize,
    image: &[u8],
    arena: &mut [u8],
    timer: &mut timer::GenericTimer,
    led: &mut impl OutputPin,
) -> bool {
    let t0 = timer.ticks();
    let top = model.classify_on::<3>(team, image, arena);
    let ticks = timer.ticks().wrapping_sub(t0);
    match top {
        Ok(top) => {
            let Some(&(class, score)) = top.first() else {
                defmt::error!("image {=usize}: the model has no classes", i);
                return false;
            };
            defmt::info!(
                "prediction image={=usize} class={=u16} label={=str} score={=f32} ticks={=u64} us={=u64}",
                i,
                class,
                model.label(class).unwrap_or("?"),
                score,
                ticks,
                timer.micros(ticks)
            );
            let _ = led.set_high();
            timer.delay_ms(2);
            let _ = led.set_low();
            true
        }
        Err(e) => {
            defmt::error!("image {=usize}: {}", i, defmt::Display2Format(&e));
            false
        }
    }
}

/// Exception handlers: nothing enables interrupts, so every exception is a fault (the other
/// kinds fall to aarch64-rt's defaults, which panic): report it and stop with failure.
struct Faults;

impl aarch64_rt::ExceptionHandlers for Faults {
    extern "C" fn sync_current(state: aarch64_rt::RegisterStateRef) {
        defmt::error!(
            "synchronous exception at {=usize:#x}, ESR {=u64:#x}",
            state.elr,
            board::syndrome()
        );
        board::exit(false)
    }
}

aarch64_rt::exception_handlers!(Faults);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // The runtime never panics on any input; this is for bugs in the firmware itself.
    if let Some(loc) = info.location() {
        defmt::error!("panic at {=str}:{=u32}", loc.file(), loc.line());
    } else {
        defmt::error!("panic");
    }
    board::exit(false)
}
