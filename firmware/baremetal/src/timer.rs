//! The Arm generic timer: ticks for measuring inferences, and `embedded_hal::DelayNs`.

use embedded_hal::delay::DelayNs;

/// The virtual counter `CNTVCT_EL0` at `CNTFRQ_EL0` ticks per second (62.5 MHz on qemu
/// virt, 19.2 MHz on a Pi 3, 54 MHz on a Pi 4; set by the board's firmware).
pub struct GenericTimer {
    freq: u64,
}

impl GenericTimer {
    /// Reads the counter frequency (1 MHz assumed if the boot firmware left it 0).
    pub fn new() -> Self {
        let freq: u64;
        // SAFETY: reading CNTFRQ_EL0 has no side effects.
        unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack)) };
        GenericTimer {
            freq: if freq == 0 { 1_000_000 } else { freq },
        }
    }

    /// The counter now (after an `ISB`, so earlier instructions have completed).
    pub fn ticks(&self) -> u64 {
        let t: u64;
        // SAFETY: reading CNTVCT_EL0 has no side effects.
        unsafe {
            core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nomem, nostack))
        };
        t
    }

    /// Ticks in microseconds.
    pub fn micros(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1_000_000 / u128::from(self.freq)) as u64
    }
}

impl DelayNs for GenericTimer {
    fn delay_ns(&mut self, ns: u32) {
        let wait = (u128::from(ns) * u128::from(self.freq)).div_ceil(1_000_000_000) as u64;
        let start = self.ticks();
        while self.ticks().wrapping_sub(start) < wait {}
    }
}
