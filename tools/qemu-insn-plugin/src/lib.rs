//! A qemu TCG plugin that counts the guest instructions a program executes, exactly, at
//! close to qemu's normal speed: `qemu-aarch64 -plugin libqemu_insn_plugin.so,out=FILE
//! PROG ARGS`.
//!
//! Each translated block gets its own counter, bumped by an inline TCG add each time the
//! block starts (no callback, no log). At exit the plugin writes `FILE`:
//!
//! ```text
//! start <hex>                     where the first block of the symbol `_start` was
//!                                 translated: the program's entry point as loaded
//! block <hex pc> <insns> <execs>  one line per translation that ran
//! ```
//!
//! Σ insns · execs is the dynamic instruction count: the same figure as weighting qemu's
//! `-d in_asm,exec,nochain` log ([`host_tools::qemu_count`](../host_tools/qemu_count/)
//! parses that, and `host-tools bench` checks that both agree), hundreds of times faster.
//!
//! Markers: each execution of one of the hint instructions `HINT #96`, `#97`, `#98` (NOPs
//! to every AArch64 CPU; `convmixer-pi --count-parts` places them around each layer's
//! parts) adds a line `mark <n> <count>`: the hint's number and the instructions executed
//! so far (a running total bumped, like the block counters, when each block starts: exact
//! to within the marker's block, and only for single-threaded programs). `host-tools bench`
//! turns these into each layer's busiest part.
//! Written against the plugin API of qemu 7.2 (API version 1; also in later versions).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The plugin API version this plugin was written for (qemu 7.2's `QEMU_PLUGIN_VERSION`).
#[no_mangle]
#[used]
pub static qemu_plugin_version: c_int = 1;

type PluginId = u64;

/// `struct qemu_plugin_tb` (opaque).
#[repr(C)]
pub struct Tb {
    _opaque: [u8; 0],
}

/// `struct qemu_plugin_insn` (opaque).
#[repr(C)]
pub struct Insn {
    _opaque: [u8; 0],
}

/// `QEMU_PLUGIN_INLINE_ADD_U64`.
const INLINE_ADD_U64: c_int = 0;

extern "C" {
    fn qemu_plugin_register_vcpu_tb_trans_cb(
        id: PluginId,
        cb: unsafe extern "C" fn(PluginId, *mut Tb),
    );
    fn qemu_plugin_register_atexit_cb(
        id: PluginId,
        cb: unsafe extern "C" fn(PluginId, *mut c_void),
        userdata: *mut c_void,
    );
    fn qemu_plugin_tb_n_insns(tb: *const Tb) -> usize;
    fn qemu_plugin_tb_vaddr(tb: *const Tb) -> u64;
    fn qemu_plugin_register_vcpu_tb_exec_inline(tb: *mut Tb, op: c_int, ptr: *mut c_void, imm: u64);
    fn qemu_plugin_tb_get_insn(tb: *const Tb, idx: usize) -> *mut Insn;
    fn qemu_plugin_insn_symbol(insn: *const Insn) -> *const c_char;
    fn qemu_plugin_insn_data(insn: *const Insn) -> *const c_void;
    fn qemu_plugin_insn_size(insn: *const Insn) -> usize;
    fn qemu_plugin_register_vcpu_insn_exec_cb(
        insn: *mut Insn,
        cb: unsafe extern "C" fn(u32, *mut c_void),
        flags: c_int,
        userdata: *mut c_void,
    );
}

/// `QEMU_PLUGIN_CB_NO_REGS`.
const CB_NO_REGS: c_int = 0;

/// The marker hints' encodings (`HINT #96..=#98`: `0xD503201F | imm7 << 5`) and numbers.
const MARKS: [(u32, u64); 3] = [(0xD503_2C1F, 96), (0xD503_2C3F, 97), (0xD503_2C5F, 98)];

/// Instructions executed so far (every block adds its length when it starts).
static TOTAL: AtomicU64 = AtomicU64::new(0);
/// The markers executed: (hint number, `TOTAL` then).
static MARKED: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// qemu's callback for an executed marker hint (`data`: its number).
///
/// # Safety
/// Called by qemu only; `data` is the number passed at registration, not a pointer.
unsafe extern "C" fn on_mark(_vcpu: u32, data: *mut c_void) {
    let total = TOTAL.load(Ordering::Relaxed);
    if let Ok(mut m) = MARKED.lock() {
        m.push((data as u64, total));
    }
}

/// One translation: start address, instructions, and the address of its counter (a
/// leaked `u64` that the translated code increments).
struct Translation {
    pc: u64,
    insns: u64,
    counter: usize,
}

static TRANSLATIONS: Mutex<Vec<Translation>> = Mutex::new(Vec::new());
static OUT: Mutex<Option<String>> = Mutex::new(None);
/// Address of the first block translated in `_start` (0: not yet seen).
static START: AtomicU64 = AtomicU64::new(0);

/// qemu's translation callback: gives the block `tb` its own inline execution counter.
///
/// # Safety
/// Called by qemu only, with `tb` a block being translated (valid during the call).
unsafe extern "C" fn on_translate(_id: PluginId, tb: *mut Tb) {
    // SAFETY: qemu hands us a valid block for the duration of the callback.
    let (pc, insns) = unsafe { (qemu_plugin_tb_vaddr(tb), qemu_plugin_tb_n_insns(tb)) };
    if START.load(Ordering::Relaxed) == 0 && insns > 0 {
        // SAFETY: instruction 0 exists (insns > 0); the symbol is a C string owned by qemu
        // or null.
        let sym = unsafe { qemu_plugin_insn_symbol(qemu_plugin_tb_get_insn(tb, 0)) };
        if !sym.is_null() && unsafe { CStr::from_ptr(sym) }.to_bytes() == b"_start" {
            START.store(pc, Ordering::Relaxed);
        }
    }
    let counter: &'static mut u64 = Box::leak(Box::new(0));
    let ptr: *mut u64 = counter;
    // SAFETY: the counter lives for the rest of the process; the add is 1 per execution.
    // TOTAL is a static; the add is the block's length.
    unsafe {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, INLINE_ADD_U64, ptr.cast(), 1);
        qemu_plugin_register_vcpu_tb_exec_inline(
            tb,
            INLINE_ADD_U64,
            TOTAL.as_ptr().cast(),
            insns as u64,
        );
    }
    for i in 0..insns {
        // SAFETY: instruction i < insns exists; its bytes are qemu's, valid during the
        // callback, and read only where it has 4 of them.
        unsafe {
            let insn = qemu_plugin_tb_get_insn(tb, i);
            if qemu_plugin_insn_size(insn) != 4 {
                continue;
            }
            let word = qemu_plugin_insn_data(insn).cast::<u32>().read_unaligned();
            if let Some(&(_, n)) = MARKS.iter().find(|m| m.0 == u32::from_le(word)) {
                qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, CB_NO_REGS, n as *mut c_void);
            }
        }
    }
    if let Ok(mut t) = TRANSLATIONS.lock() {
        t.push(Translation {
            pc,
            insns: insns as u64,
            counter: ptr as usize,
        });
    }
}

/// qemu's exit callback: writes the counts to the `out=` file.
///
/// # Safety
/// Called by qemu only, once, at exit (no pointer argument is read).
unsafe extern "C" fn on_exit(_id: PluginId, _data: *mut c_void) {
    let Some(path) = OUT.lock().ok().and_then(|o| o.clone()) else {
        return;
    };
    let mut text = String::new();
    let start = START.load(Ordering::Relaxed);
    if start != 0 {
        text.push_str(&format!("start {start:x}\n"));
    }
    if let Ok(m) = MARKED.lock() {
        for (n, count) in m.iter() {
            text.push_str(&format!("mark {n} {count}\n"));
        }
    }
    if let Ok(t) = TRANSLATIONS.lock() {
        for tr in t.iter() {
            // SAFETY: the counter was leaked in on_translate and never freed; the guest has
            // stopped running.
            let execs = unsafe { std::ptr::read_volatile(tr.counter as *const u64) };
            if execs > 0 {
                text.push_str(&format!("block {:x} {} {}\n", tr.pc, tr.insns, execs));
            }
        }
    }
    let res = std::fs::File::create(&path).and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = res {
        eprintln!("qemu-insn-plugin: cannot write {path}: {e}");
    }
}

/// Entry point qemu calls after loading the plugin. Takes one argument, `out=FILE`.
///
/// # Safety
/// Called by qemu with `argc` valid C strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: PluginId,
    _info: *const c_void,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    let mut out = None;
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: qemu passes argc valid NUL-terminated strings.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy();
        match arg.strip_prefix("out=") {
            Some(p) if !p.is_empty() => out = Some(p.to_string()),
            _ => {
                eprintln!("qemu-insn-plugin: unknown argument {arg} (expected out=FILE)");
                return -1;
            }
        }
    }
    let Some(out) = out else {
        eprintln!("qemu-insn-plugin: missing argument out=FILE");
        return -1;
    };
    if let Ok(mut o) = OUT.lock() {
        *o = Some(out);
    }
    // SAFETY: registering callbacks with the id qemu gave us.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
        qemu_plugin_register_atexit_cb(id, on_exit, std::ptr::null_mut());
    }
    0
}
