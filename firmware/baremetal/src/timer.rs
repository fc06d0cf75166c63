//! The Arm generic timer through the `arm-generic-timer` driver: the virtual counter for
//! ticks per inference, and the virtual timer behind `embedded_hal::delay::DelayNs`.

use arm_generic_timer::sysreg::{VirtualCounter, VirtualTimer};
use arm_generic_timer::{CounterInterface, Timer};
use embedded_hal::delay::DelayNs;

/// `CNTVCT_EL0` at `CNTFRQ_EL0` ticks per second (62.5 MHz under qemu; 19.2 MHz on a Pi 3,
/// 54 MHz on a Pi 4, as their boot firmware sets it), and a delay on `CNTV_*`.
pub struct GenericTimer {
    counter: VirtualCounter,
    delay: Timer<VirtualTimer>,
}

impl GenericTimer {
    /// Takes the virtual timer (its interrupt stays masked: nothing unmasks IRQs).
    pub fn new() -> Self {
        // SAFETY: the firmware creates one GenericTimer; nothing else touches CNTV_*.
        let mut delay = Timer::new(unsafe { VirtualTimer::new() });
        delay.enable();
        GenericTimer {
            counter: VirtualCounter,
            delay,
        }
    }

    /// The counter now.
    pub fn ticks(&self) -> u64 {
        self.counter.counter_value()
    }

    /// Ticks in microseconds (1 MHz assumed if the boot firmware left `CNTFRQ_EL0` at 0).
    pub fn micros(&self, ticks: u64) -> u64 {
        let freq = match self.counter.frequency() {
            0 => 1_000_000,
            f => u128::from(f),
        };
        (u128::from(ticks) * 1_000_000 / freq) as u64
    }
}

impl DelayNs for GenericTimer {
    fn delay_ns(&mut self, ns: u32) {
        self.delay.delay_ns(ns);
    }
}
