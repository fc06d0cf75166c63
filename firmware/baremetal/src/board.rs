//! What differs between boards: memory map, UART and LED addresses, exception level, and
//! how the firmware ends.
//!
//! | board | load address | runs at | UART (PL011) | LED |
//! | --- | --- | --- | --- | --- |
//! | qemu `virt` | 0x4008_0000 (ELF) | EL1 | 0x0900_0000 | PL061 GPIO 0x0903_0000, line 0 |
//! | Raspberry Pi 3 | 0x8_0000 (`kernel8.img`) | EL2 | 0x3F20_1000 | GPIO 29 (the Pi 3B+ ACT LED) |
//! | Raspberry Pi 4 | 0x8_0000 (`kernel8.img`) | EL2 | 0xFE20_1000 | GPIO 42 (the ACT LED) |
//!
//! The GPU firmware of a Raspberry Pi starts only core 0 on a raw `kernel8.img` (the other
//! cores wait in its spin table), and so does qemu; [`park_secondary_cores`] still stops
//! any other core that gets here. [`start_core`] starts another core at an entry point:
//! PSCI `CPU_ON` on virt, the spin table on a Raspberry Pi ([`crate::smp`]).

use core::cell::UnsafeCell;
use core::convert::Infallible;

use aarch64_rt::{initial_pagetable, InitialPagetable};
use embedded_hal::digital::{ErrorType, OutputPin};

/// Block descriptor bits (level 1 or 2) for the attribute indices of aarch64-rt's
/// `DEFAULT_MAIR`: index 0 = Device-nGnRE, index 1 = Normal write-back cacheable.
const BLOCK: usize = 0b01;
const ACCESSED: usize = 1 << 10;
const INNER_SHAREABLE: usize = 0b11 << 8;
/// Execute-never: UXN | PXN at EL1 (both, so that no EL may fetch from device memory);
/// XN at EL2, where bit 53 is RES0.
#[cfg(feature = "virt")]
const XN: usize = (1 << 54) | (1 << 53);
#[cfg(not(feature = "virt"))]
const XN: usize = 1 << 54;
/// AP[1] is RES1 in the single-VA-range EL2 regime (Raspberry Pi); 0 = EL1-only access at
/// EL1 (virt).
#[cfg(feature = "virt")]
const AP: usize = 0;
#[cfg(not(feature = "virt"))]
const AP: usize = 1 << 6;
const DEVICE: usize = BLOCK | AP | ACCESSED | XN;
const NORMAL: usize = BLOCK | (1 << 2) | AP | INNER_SHAREABLE | ACCESSED;
#[cfg_attr(feature = "pi3", allow(dead_code))]
const GIB: usize = 1 << 30;

#[cfg(feature = "virt")]
mod map {
    pub const NAME: &str = "qemu virt";
    pub const UART: usize = 0x0900_0000;
    /// UART reference clock (qemu ignores the baud divisor).
    pub const UART_CLOCK: u32 = 24_000_000;
    pub const GPIO: usize = 0x0903_0000;
    pub const LED: u8 = 0;
}
#[cfg(feature = "pi3")]
mod map {
    pub const NAME: &str = "Raspberry Pi 3";
    pub const PERIPHERALS: usize = 0x3F00_0000;
    pub const UART: usize = 0x3F20_1000;
    /// `init_uart_clock=48000000` in config.txt (README).
    pub const UART_CLOCK: u32 = 48_000_000;
    pub const GPIO: usize = 0x3F20_0000;
    pub const LED: u8 = 29;
}
#[cfg(feature = "pi4")]
mod map {
    pub const NAME: &str = "Raspberry Pi 4";
    pub const UART: usize = 0xFE20_1000;
    pub const UART_CLOCK: u32 = 48_000_000;
    pub const GPIO: usize = 0xFE20_0000;
    pub const LED: u8 = 42;
}
pub use map::{NAME, UART, UART_CLOCK};

// The identity map aarch64-rt enables before any Rust code runs, in 1 GiB blocks.
// virt: devices below 1 GiB, RAM from 1 GiB.
#[cfg(feature = "virt")]
initial_pagetable!({
    let mut t = [0; 512];
    t[0] = DEVICE;
    t[1] = GIB | NORMAL;
    InitialPagetable(t)
});
// Pi 3: RAM and (from 0x3F00_0000) the peripherals share the first GiB; it starts as normal
// memory so that the start-up code runs cached, and `init` splits it into 2 MiB blocks
// before any device access.
#[cfg(feature = "pi3")]
initial_pagetable!({
    let mut t = [0; 512];
    t[0] = NORMAL;
    InitialPagetable(t)
});
// Pi 4: RAM in the first GiB, peripherals at 0xFC00_0000..0x1_0000_0000.
#[cfg(feature = "pi4")]
initial_pagetable!({
    let mut t = [0; 512];
    t[0] = NORMAL;
    t[3] = 3 * GIB | DEVICE;
    InitialPagetable(t)
});

/// Boot stack in 4 KiB pages. The runtime keeps every buffer in the arena, so the stack
/// holds only call frames: the high-water mark is logged after the compiled-in images
/// (about 5 KiB with the MNIST model); 16 KiB leaves room for larger models' frames.
/// aarch64-rt puts the stack right above `.bss`, with no guard page.
pub const STACK_PAGES: usize = 4;

/// The boot stack's bounds (aarch64-rt's linker script), as addresses.
fn stack_bounds() -> (usize, usize) {
    extern "C" {
        static boot_stack_begin: [u8; 0];
        static boot_stack_end: [u8; 0];
    }
    // Only the symbols' addresses are taken (safe: nothing is read).
    (
        &raw const boot_stack_begin as usize,
        &raw const boot_stack_end as usize,
    )
}

/// Zeroes the boot stack below the current stack pointer (the stack is not part of the
/// image, so nothing else clears it), for [`stack_used`].
pub fn clear_free_stack() {
    let sp: usize;
    // SAFETY: reads SP only.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack)) };
    let (begin, _) = stack_bounds();
    let mut a = begin;
    while a + 8 <= sp.saturating_sub(64) {
        // SAFETY: below SP, inside the stack: memory no live frame uses; 8-aligned (the
        // stack starts 4 KiB aligned).
        unsafe { (a as *mut u64).write_volatile(0) };
        a += 8;
    }
}

/// Bytes of the boot stack ever written since [`clear_free_stack`]: from the lowest
/// non-zero byte to the top.
pub fn stack_used() -> usize {
    let (begin, end) = stack_bounds();
    high_water(begin, end)
}

/// Bytes of the stack `begin..end` (zeroed before its core started) ever written: from the
/// lowest non-zero byte to the top.
pub fn high_water(begin: usize, end: usize) -> usize {
    let mut a = begin;
    // SAFETY: reads inside a stack (the callers pass a whole core stack), below the live
    // frames or in them; the values are only compared with 0.
    while a < end && unsafe { (a as *const u8).read_volatile() } == 0 {
        a += 1;
    }
    end - a
}

/// A `static` the firmware hands out once, as `&mut` (no interrupt handlers).
pub struct Static<T>(UnsafeCell<T>);

// SAFETY: interrupts stay masked; `get`'s contract keeps the borrows unique. Core 0 owns
// every `Static` but the other cores' stacks (each used by its own core only, and read
// back by core 0 for the high-water marks) and the Pi 3's translation tables (written by
// core 0 before any other core starts, then only read).
unsafe impl<T> Sync for Static<T> {}

impl<T> Static<T> {
    /// Wraps the initial value.
    pub const fn new(v: T) -> Self {
        Static(UnsafeCell::new(v))
    }

    /// The value, mutably.
    ///
    /// # Safety
    /// At most one borrow obtained through `get` may be live at a time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut T {
        // SAFETY: the caller guarantees uniqueness.
        unsafe { &mut *self.0.get() }
    }

    /// The value's address (nothing is borrowed).
    pub const fn as_ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// Stops every core but core 0 (MPIDR affinity 0 ≠ 0) in a `WFE` loop.
pub fn park_secondary_cores() {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    if mpidr & 0xff != 0 {
        loop {
            // SAFETY: waits for an event; no memory effects.
            unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
        }
    }
}

/// The current exception level (1 on virt, 2 on a Raspberry Pi).
pub fn current_el() -> u8 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    ((el >> 2) & 3) as u8
}

/// The exception syndrome register of the current exception level.
pub fn syndrome() -> u64 {
    let esr: u64;
    // SAFETY: reading ESR_ELx has no side effects.
    unsafe {
        #[cfg(feature = "virt")]
        core::arch::asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack));
        #[cfg(not(feature = "virt"))]
        core::arch::asm!("mrs {}, esr_el2", out(reg) esr, options(nomem, nostack));
    }
    esr
}

/// What every core sets up for itself after aarch64-rt's start-up (identity map, MMU,
/// caches, FP/SIMD, exception vector): `FPCR`, and on a Pi 3 the fine memory map (whose
/// tables core 0 fills in [`init`] before it starts any other core).
pub fn init_core() {
    // FPCR's reset value is UNKNOWN on hardware: no flush-to-zero, round to nearest, so
    // that subnormals behave as the blob format defines (docs/blob-format.md).
    // SAFETY: writes the FP control register only.
    unsafe { core::arch::asm!("msr fpcr, xzr", options(nomem, nostack)) };
    #[cfg(feature = "pi3")]
    use_fine_map();
}

/// Board set-up on core 0 after aarch64-rt's start-up: [`init_core`], the Pi 3's fine
/// memory map, the Raspberry Pi's UART pins.
pub fn init() {
    #[cfg(feature = "pi3")]
    fill_fine_map();
    init_core();
    #[cfg(any(feature = "pi3", feature = "pi4"))]
    {
        // GPIO 14/15 to ALT0 (TXD0/RXD0 of the PL011): GPFSEL1 bits 12..18.
        let fsel1 = (map::GPIO + 4) as *mut u32;
        // SAFETY: GPFSEL1 of the board's GPIO block, mapped as device memory.
        unsafe {
            let v = fsel1.read_volatile() & !(0o77 << 12);
            fsel1.write_volatile(v | (0o44 << 12));
        }
    }
}

/// 4 KiB-aligned translation table.
#[cfg(feature = "pi3")]
#[repr(C, align(4096))]
struct Table([usize; 512]);

#[cfg(feature = "pi3")]
static L1: Static<Table> = Static::new(Table([0; 512]));
#[cfg(feature = "pi3")]
static L2: Static<Table> = Static::new(Table([0; 512]));

/// Pi 3: the tables that replace the initial map's first 1 GiB block by 2 MiB blocks —
/// normal memory below the peripherals at 0x3F00_0000, device memory from there — so that
/// the UART and GPIO registers are never cached. Filled once, on core 0, before any other
/// core starts.
#[cfg(feature = "pi3")]
fn fill_fine_map() {
    // SAFETY: called once, on core 0, before anything uses the tables.
    unsafe {
        let l2 = L2.get();
        for (i, e) in l2.0.iter_mut().enumerate() {
            let addr = i << 21;
            *e = addr
                | if addr >= map::PERIPHERALS {
                    DEVICE
                } else {
                    NORMAL
                };
        }
        L1.get().0[0] = (l2 as *const Table as usize) | 0b11;
    }
}

/// Pi 3: switches this core to the tables of [`fill_fine_map`]. The switch changes block
/// sizes and the peripherals' memory type, so it is done with the MMU off (break-before-make
/// for the whole regime): the code is identity-mapped and touches no data in between.
/// (Until then the peripherals are normal memory: nothing accesses them, but a CPU could
/// prefetch from them; the window is the few microseconds of start-up code before this
/// runs.)
#[cfg(feature = "pi3")]
fn use_fine_map() {
    let l1 = L1.as_ptr() as usize;
    // SAFETY: the tables are filled (core 0, before starting any core) and map the same
    // RAM with the same attributes as the initial map; the TLB is invalidated after the
    // switch.
    unsafe {
        core::arch::asm!(
            "dsb sy",
            "mrs {s}, sctlr_el2",
            "bic {s}, {s}, #1",
            "msr sctlr_el2, {s}",
            "isb",
            "msr ttbr0_el2, {t}",
            "isb",
            "tlbi alle2",
            "dsb ish",
            "isb",
            "orr {s}, {s}, #1",
            "msr sctlr_el2, {s}",
            "isb",
            t = in(reg) l1,
            s = out(reg) _,
            options(nostack)
        );
    }
}

/// Starts core `core` (MPIDR affinity 0; Raspberry Pi cores 1–3) at `entry`, with its MMU
/// off, as it comes out of reset: PSCI `CPU_ON` through the hypervisor call on virt (an
/// error is PSCI's negative status), the spin table on a Raspberry Pi (the armstub's, or
/// qemu's own, waits on the 64-bit word at 0xd8 + 8 × core and jumps to a non-zero value
/// there; it cannot fail, so whether the core came is only seen by it arriving).
pub fn start_core(core: usize, entry: usize) -> Result<(), i64> {
    #[cfg(feature = "virt")]
    {
        let status: i64;
        // SAFETY: PSCI CPU_ON (SMC64 function 0xC400_0003) through qemu virt's hypervisor
        // call: x1 the target's MPIDR, x2 the entry point, x3 the context (unused); x0
        // returns the status, x1–x17 may be clobbered (SMCCC). The new core runs only the
        // entry code, on memory no one else uses (its own stack).
        unsafe {
            core::arch::asm!(
                "hvc #0",
                inout("x0") 0xC400_0003u64 => status,
                inout("x1") core as u64 => _,
                inout("x2") entry as u64 => _,
                inout("x3") 0u64 => _,
                clobber_abi("C"),
                options(nostack)
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(status)
        }
    }
    #[cfg(not(feature = "virt"))]
    {
        let release = (0xd8 + 8 * core) as *mut u64;
        // SAFETY: the spin-table word of `core` (cores 1–3: 0xe0..0xf0, in the first page
        // of RAM, which the armstub reserves and nothing of ours uses), mapped as normal
        // memory. The waiting core reads it with its MMU and caches off, so the line is
        // cleaned to the point of coherency before the event.
        unsafe {
            release.write_volatile(entry as u64);
            core::arch::asm!(
                "dc civac, {a}",
                "dsb sy",
                "sev",
                a = in(reg) release,
                options(nostack)
            );
        }
        Ok(())
    }
}

/// Waits for an event (a `sev` from another core): [`convmixer_edge::cores::Team`]'s wait.
pub fn wait_for_event(_: u32) {
    // SAFETY: waits for an event; no memory effects.
    unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
}

/// Sends an event to every core, after this core's stores are visible to them.
pub fn send_event() {
    // SAFETY: a barrier and an event; no memory is accessed.
    unsafe { core::arch::asm!("dsb ish", "sev", options(nostack)) };
}

/// The LED that blinks once per classification.
pub fn led() -> impl OutputPin {
    #[cfg(feature = "virt")]
    return Pl061Pin::new(map::GPIO, map::LED);
    #[cfg(not(feature = "virt"))]
    return Bcm2835Pin::new(map::GPIO, map::LED);
}

/// One line of an Arm PL061 GPIO block as an output (qemu `virt`).
#[cfg(feature = "virt")]
struct Pl061Pin {
    base: usize,
    line: u8,
}

#[cfg(feature = "virt")]
impl Pl061Pin {
    fn new(base: usize, line: u8) -> Self {
        let dir = (base + 0x400) as *mut u32;
        // SAFETY: GPIODIR of the PL061 at `base`, mapped as device memory.
        unsafe { dir.write_volatile(dir.read_volatile() | 1 << line) };
        Pl061Pin { base, line }
    }

    fn write(&mut self, high: bool) {
        // GPIODATA is addressed through a mask in address bits 2..10: only line `line`.
        let data = (self.base + ((1usize << self.line) << 2)) as *mut u32;
        // SAFETY: a GPIODATA alias of the PL061 at `base`.
        unsafe { data.write_volatile(if high { 0xff } else { 0 }) };
    }
}

#[cfg(feature = "virt")]
impl ErrorType for Pl061Pin {
    type Error = Infallible;
}

#[cfg(feature = "virt")]
impl OutputPin for Pl061Pin {
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.write(true);
        Ok(())
    }
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.write(false);
        Ok(())
    }
}

/// One pin of the BCM2835/BCM2711 GPIO block as an output (Raspberry Pi).
#[cfg(not(feature = "virt"))]
struct Bcm2835Pin {
    base: usize,
    pin: u8,
}

#[cfg(not(feature = "virt"))]
impl Bcm2835Pin {
    fn new(base: usize, pin: u8) -> Self {
        let fsel = (base + 4 * usize::from(pin / 10)) as *mut u32;
        let shift = 3 * u32::from(pin % 10);
        // SAFETY: GPFSELn of the GPIO block at `base`, mapped as device memory; function
        // 0b001 = output.
        unsafe { fsel.write_volatile((fsel.read_volatile() & !(7 << shift)) | 1 << shift) };
        Bcm2835Pin { base, pin }
    }

    fn write(&mut self, high: bool) {
        // GPSET0/1 at 0x1C/0x20, GPCLR0/1 at 0x28/0x2C.
        let bank = 4 * usize::from(self.pin / 32);
        let reg = self.base + if high { 0x1C } else { 0x28 } + bank;
        // SAFETY: a set/clear register of the GPIO block (writes of 0 bits are ignored).
        unsafe { (reg as *mut u32).write_volatile(1 << (self.pin % 32)) };
    }
}

#[cfg(not(feature = "virt"))]
impl ErrorType for Bcm2835Pin {
    type Error = Infallible;
}

#[cfg(not(feature = "virt"))]
impl OutputPin for Bcm2835Pin {
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.write(true);
        Ok(())
    }
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.write(false);
        Ok(())
    }
}

/// Set by the first [`exit`]: if its `HLT`/`HVC` faults (semihosting or PSCI missing),
/// the fault handler's own `exit` must not try again (it would recurse until the stack
/// overflows into `.bss`).
static EXITING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Ends the firmware: with `semihosting` (qemu `-semihosting`), SYS_EXIT with status 0
/// (`ok`) or 1; otherwise PSCI SYSTEM_OFF on virt, and a `WFE` loop on a Raspberry Pi (and
/// wherever those calls fail).
pub fn exit(ok: bool) -> ! {
    if !EXITING.swap(true, core::sync::atomic::Ordering::Relaxed) {
        crate::serial::flush();
        #[cfg(feature = "semihosting")]
        {
            // ADP_Stopped_ApplicationExit with the exit status (AArch64 SYS_EXIT block).
            let block: [u64; 2] = [0x2_0026, if ok { 0 } else { 1 }];
            // SAFETY: semihosting call 0x18 (SYS_EXIT) reads the two-word block; qemu
            // exits. A return value would come back in x0.
            unsafe {
                core::arch::asm!(
                    "hlt #0xf000",
                    inout("x0") 0x18u64 => _,
                    in("x1") block.as_ptr(),
                    options(nostack)
                )
            };
        }
        #[cfg(all(feature = "virt", not(feature = "semihosting")))]
        // SAFETY: PSCI SYSTEM_OFF through qemu virt's hypervisor call (SMCCC: x0 returns
        // a status, x1–x17 may be clobbered); it does not return when PSCI is present.
        unsafe {
            core::arch::asm!(
                "hvc #0",
                inout("x0") 0x8400_0008u64 => _,
                clobber_abi("C"),
                options(nostack)
            )
        };
    }
    let _ = ok;
    loop {
        // SAFETY: waits for an event; no memory effects.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}
