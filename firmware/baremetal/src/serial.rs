//! The PL011 UART behind `embedded_io::{Read, Write}` (the `arm-pl011-uart` driver), and the
//! defmt global logger that writes its frames to it.
//!
//! One core, interrupts masked: the UART lives in a [`Static`] that only this module
//! touches; the logger refuses to nest (a nested frame would interleave with the open one).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use arm_pl011_uart::{DataBits, LineConfig, Parity, StopBits, Uart, UniqueMmioPointer};
#[cfg(not(feature = "semihosting"))]
use embedded_io::Read;
use embedded_io::Write;

use crate::board::{self, Static};

static UART: Static<Option<Uart<'static>>> = Static::new(None);
static ENCODER: Static<defmt::Encoder> = Static::new(defmt::Encoder::new());
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Enables the PL011 at 115200 8N1.
pub fn init() {
    let Some(base) = NonNull::new(board::UART as *mut _) else {
        return;
    };
    // SAFETY: the board's PL011 register block, mapped as device memory for the whole run;
    // nothing else in the firmware accesses it.
    let mut uart = Uart::new(unsafe { UniqueMmioPointer::new(base) });
    let config = LineConfig {
        data_bits: DataBits::Bits8,
        parity: Parity::None,
        stop_bits: StopBits::One,
    };
    let _ = uart.enable(config, 115_200, board::UART_CLOCK);
    // SAFETY: called once at start-up, before any logging.
    unsafe { *UART.get() = Some(uart) };
}

fn with_uart(f: impl FnOnce(&mut Uart<'static>)) {
    // SAFETY: one core, no interrupts: the borrow ends before anything else can take one.
    if let Some(u) = unsafe { UART.get() }.as_mut() {
        f(u)
    }
}

fn write_bytes(bytes: &[u8]) {
    with_uart(|u| {
        let _ = u.write_all(bytes);
    });
}

/// Waits until the UART has sent everything.
pub fn flush() {
    with_uart(|u| {
        let _ = u.flush();
    });
}

/// Fills `buf` from the UART; false on a receive error (framing, parity, overrun).
#[cfg(not(feature = "semihosting"))]
pub fn read_exact(buf: &mut [u8]) -> bool {
    let mut ok = false;
    with_uart(|u| ok = u.read_exact(buf).is_ok());
    ok
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` refuses to nest, so the encoder and the UART have one user at a time
// between `acquire` and `release`.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        if TAKEN.swap(true, Ordering::Acquire) {
            // Logging from inside a log call (a fault while formatting): give up.
            board::exit(false);
        }
        // SAFETY: taken above.
        unsafe { ENCODER.get() }.start_frame(write_bytes);
    }

    unsafe fn flush() {
        flush();
    }

    unsafe fn release() {
        // SAFETY: the logger is taken (defmt calls release only after acquire).
        unsafe { ENCODER.get() }.end_frame(write_bytes);
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: as for release.
        unsafe { ENCODER.get() }.write(bytes, write_bytes);
    }
}
