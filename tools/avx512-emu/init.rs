//! `/init` of the AVX-512 emulation's initramfs (tools/avx512-emu/run.sh): mounts proc, sys
//! and dev, runs `/test` with the words of `/test.args` (leading `KEY=VALUE` words become its
//! environment), prints `TEST-EXIT <code>` and powers the machine off. Built static.
use std::arch::asm;
use std::process::Command;

/// A raw Linux x86_64 system call with up to five arguments.
unsafe fn syscall5(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
         in("r10") d, in("r8") e, lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

fn mount(src: &str, dst: &str, fs: &str) {
    let _ = std::fs::create_dir_all(dst);
    let (s, d, f) = (format!("{src}\0"), format!("{dst}\0"), format!("{fs}\0"));
    // SAFETY: mount(2) with three NUL-terminated strings that outlive the call.
    let r = unsafe { syscall5(165, s.as_ptr() as usize, d.as_ptr() as usize, f.as_ptr() as usize, 0, 0) };
    if r != 0 {
        println!("[init] mount {dst} failed: {r}");
    }
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let words = std::fs::read_to_string("/test.args").unwrap_or_default();
    let mut cmd = Command::new("/test");
    let mut args = Vec::new();
    for w in words.split_whitespace() {
        match w.split_once('=') {
            Some((k, v)) if args.is_empty() && !k.starts_with('-') => {
                cmd.env(k, v);
            }
            _ => args.push(w),
        }
    }
    println!("[init] running /test {args:?}");
    let code = cmd.args(&args).status().ok().and_then(|s| s.code());
    println!("[init] TEST-EXIT {}", code.map_or("none".to_string(), |c| c.to_string()));
    std::thread::sleep(std::time::Duration::from_secs(2)); // let the serial port drain
    // SAFETY: sync(2), then reboot(2) with the power-off command; neither touches our memory.
    unsafe {
        syscall5(162, 0, 0, 0, 0, 0);
        syscall5(169, 0xfee1_dead, 672_274_793, 0x4321_fedc, 0, 0);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
