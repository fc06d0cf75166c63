//! Counting the guest instructions an aarch64 program executes under qemu-user.
//!
//! `qemu-aarch64 -d in_asm,exec,nochain` logs
//!
//! * an `IN:` block once per translated block: one `0x<addr>:  <encoding>  <insn>` line
//!   per guest instruction, ended by a blank line;
//! * a `Trace <cpu>: 0x<host> [<cs_base>/<guest pc>/<flags>/<cflags>] <symbol>` line each
//!   time a block executes (`nochain` routes every execution through the logger).
//!
//! The dynamic instruction count is the sum, over `Trace` lines, of the size of the block
//! that ran. The log is huge (one line per executed block, gigabytes for a large model), so
//! [`Counter`] reads it line by line and keeps only a map from block address to size.
//! Deterministic: the same program and input give the same count on every run.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// What one log gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Guest instructions executed: Σ size(block) over executions.
    pub instructions: u64,
    /// Block executions (`Trace` lines).
    pub blocks_executed: u64,
    /// Blocks translated (`IN:` blocks).
    pub blocks_translated: u64,
    /// Executions of a block whose translation was never seen (counted as 0
    /// instructions). Should be 0; anything else means the log was not complete.
    pub unknown_executions: u64,
}

/// Multiplicative hash for block addresses (SipHash is needlessly slow here).
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Lines of the log that are not part of qemu's trace format are kept (the last
/// [`Counter::OTHER_KEPT`]): with the log on stdout (`-D /dev/stdout`) they are the
/// guest's own stdout, which arrives in whole lines between qemu's (qemu flushes each log
/// line before it runs more guest code, and Rust's stdout is line-buffered).
#[derive(Default)]
pub struct Counter {
    sizes: HashMap<u64, u32, BuildHasherDefault<AddrHasher>>,
    execs: HashMap<u64, u64, BuildHasherDefault<AddrHasher>>,
    counts: Counts,
    /// Inside an `IN:` block: (first address, instructions so far, labelled `_start`).
    block: Option<(Option<u64>, u32, bool)>,
    start_pc: Option<u64>,
    other: Vec<String>,
}

/// One translated block and how often it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Guest address of its first instruction.
    pub pc: u64,
    /// Guest instructions (aarch64: 4 bytes each, contiguous).
    pub size: u32,
    /// Executions.
    pub execs: u64,
}

/// `0x`-less hex digits at the start of `s`, as a number (stops at the first non-digit).
fn hex_prefix(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => break,
        };
        v = v.checked_mul(16)? | u64::from(d);
        n += 1;
    }
    (n > 0).then_some(v)
}

/// The guest pc of a `Trace` line: the field after the first `/` inside `[...]`.
fn trace_pc(line: &[u8]) -> Option<u64> {
    let open = line.iter().position(|&c| c == b'[')?;
    let rest = &line[open..];
    let slash = rest.iter().position(|&c| c == b'/')?;
    hex_prefix(&rest[slash + 1..])
}

impl Counter {
    /// How many non-log lines [`Counter::other_lines`] keeps.
    pub const OTHER_KEPT: usize = 1000;

    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    fn end_block(&mut self) {
        if let Some((Some(pc), n, start)) = self.block.take() {
            if start && self.start_pc.is_none() {
                self.start_pc = Some(pc);
            }
            // A retranslation at the same address replaces the old size, as the executions
            // that follow run the new block.
            self.sizes.insert(pc, n);
            self.counts.blocks_translated += 1;
        }
    }

    /// Feeds one log line (with or without its line ending).
    pub fn line(&mut self, line: &[u8]) {
        let line = line
            .strip_suffix(b"\n")
            .map_or(line, |l| l.strip_suffix(b"\r").unwrap_or(l));
        if let Some((first, n, _)) = &mut self.block {
            if let Some(hex) = line.strip_prefix(b"0x") {
                if first.is_none() {
                    *first = hex_prefix(hex);
                }
                *n += 1;
                return;
            }
            self.end_block();
        }
        if line.starts_with(b"Trace ") {
            match trace_pc(line).and_then(|pc| Some((pc, *self.sizes.get(&pc)?))) {
                Some((pc, n)) => {
                    self.counts.instructions += u64::from(n);
                    *self.execs.entry(pc).or_insert(0) += 1;
                }
                None => self.counts.unknown_executions += 1,
            }
            self.counts.blocks_executed += 1;
        } else if let Some(sym) = line.strip_prefix(b"IN:") {
            self.block = Some((None, 0, sym.trim_ascii() == b"_start"));
        } else if !(line.is_empty()
            || line.starts_with(b"----")
            || line.starts_with(b"0x")
            || line.starts_with(b"Linking TBs")
            || line.starts_with(b"OBJD-"))
        {
            if self.other.len() == Self::OTHER_KEPT {
                self.other.remove(0);
            }
            self.other.push(String::from_utf8_lossy(line).into_owned());
        }
    }

    /// Reads a whole log, streaming.
    pub fn read<R: Read>(&mut self, r: R) -> std::io::Result<()> {
        let mut r = BufReader::with_capacity(1 << 20, r);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            self.line(&buf);
        }
    }

    /// The counts so far (closes a block still open at the end of the log).
    pub fn finish(&mut self) -> Counts {
        self.end_block();
        self.counts
    }

    /// Every executed block with its (last translated) size and execution count.
    pub fn blocks(&self) -> Vec<Block> {
        let mut v: Vec<Block> = self
            .execs
            .iter()
            .map(|(&pc, &execs)| Block {
                pc,
                size: self.sizes.get(&pc).copied().unwrap_or(0),
                execs,
            })
            .collect();
        v.sort_by_key(|b| b.pc);
        v
    }

    /// Guest address of the first block translated under the symbol `_start` (the main
    /// program's entry point: with its ELF entry address it gives the load address of a
    /// position-independent executable).
    pub fn start_pc(&self) -> Option<u64> {
        self.start_pc
    }

    /// The last lines that were not qemu's log format.
    pub fn other_lines(&self) -> &[String] {
        &self.other
    }
}

/// Counts the instructions in a log given as text.
pub fn count_log(log: &[u8]) -> Counts {
    let mut c = Counter::new();
    for line in log.split_inclusive(|&b| b == b'\n') {
        c.line(line);
    }
    c.finish()
}

/// One program run under qemu with the trace parsed.
#[derive(Debug)]
pub struct Run {
    /// The counts.
    pub counts: Counts,
    /// The guest's standard output.
    pub stdout: String,
    /// Every executed block ([`Counter::blocks`]).
    pub blocks: Vec<Block>,
    /// Guest address of the program's entry point as loaded ([`Counter::start_pc`], or
    /// what the plugin reports).
    pub entry_pc: Option<u64>,
    /// The plugin's markers, in execution order: (hint number, instructions so far); empty
    /// for the log counter.
    pub marks: Vec<(u64, u64)>,
}

/// What the plugin wrote: the counts, the executed blocks, the entry point and the markers.
pub type Parsed = (Counts, Vec<Block>, Option<u64>, Vec<(u64, u64)>);

/// Instructions that the parts of split layers save when they run on several cores: over
/// the markers of a `convmixer-pi --count-parts` run (`HINT #96` before a layer's parts,
/// `#97` before each part, `#98` after the last), each layer's parts' instructions minus
/// its busiest part's. Returns (saved instructions, layers, parts beyond each layer's first).
///
/// ```
/// use host_tools::qemu_count::join_savings;
/// // One layer of two parts (100 and 60 instructions), one of three (10, 30, 20).
/// let marks = [(96, 0), (97, 5), (97, 105), (98, 165), (96, 200), (97, 201), (97, 211), (97, 241), (98, 261)];
/// assert_eq!(join_savings(&marks).unwrap(), (60 + 30, 2, 3));
/// ```
pub fn join_savings(marks: &[(u64, u64)]) -> Result<(u64, u64, u64)> {
    let (mut saved, mut joins, mut extra) = (0u64, 0u64, 0u64);
    let mut i = 0;
    while i < marks.len() {
        if marks[i].0 != 96 {
            bail!(
                "marker #{} at {} outside a layer's parts",
                marks[i].0,
                marks[i].1
            );
        }
        let mut starts = Vec::new();
        i += 1;
        while i < marks.len() && marks[i].0 == 97 {
            starts.push(marks[i].1);
            i += 1;
        }
        let Some(&(98, end)) = marks.get(i) else {
            bail!("a layer's parts do not end in marker #98");
        };
        i += 1;
        let bounds: Vec<u64> = starts.iter().copied().chain([end]).collect();
        let parts: Vec<u64> = bounds
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect();
        let (sum, max) = (
            parts.iter().sum::<u64>(),
            parts.iter().copied().max().unwrap_or(0),
        );
        saved += sum - max;
        joins += 1;
        extra += parts.len().saturating_sub(1) as u64;
    }
    Ok((saved, joins, extra))
}

/// The entry point (`e_entry`) of a 64-bit little-endian ELF file.
pub fn elf_entry(path: &Path) -> Result<u64> {
    let mut head = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("{}: cannot read ELF header", path.display()))?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        bail!("{}: not a 64-bit little-endian ELF file", path.display());
    }
    Ok(u64::from_le_bytes(
        head[24..32].try_into().expect("8 bytes"),
    ))
}

/// Runs `qemu-aarch64 -cpu CPU -d in_asm,exec,nochain -D /dev/stdout PROG ARGS` and
/// counts the guest instructions, parsing the log as it streams. The guest's stdout lines
/// are picked out of the log; its stderr is kept apart (unbuffered writes would split
/// log lines), and a failing guest is an error quoting its last stderr line.
pub fn run_counted(cpu: &str, prog: &Path, args: &[String]) -> Result<Run> {
    let mut child = Command::new("qemu-aarch64")
        .args([
            "-cpu",
            cpu,
            "-d",
            "in_asm,exec,nochain",
            "-D",
            "/dev/stdout",
        ])
        .arg(prog)
        .args(args)
        .env_remove("QEMU_CPU")
        .env_remove("QEMU_LOG")
        .env_remove("QEMU_LOG_FILENAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run qemu-aarch64 (install qemu-user)")?;
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        err.read_to_end(&mut s)
            .map(|_| String::from_utf8_lossy(&s).into_owned())
    });
    let mut counter = Counter::new();
    let parsed = counter.read(child.stdout.take().expect("piped stdout"));
    let status = child.wait().context("waiting for qemu-aarch64")?;
    let stderr = reader
        .join()
        .map_err(|_| anyhow!("stderr reader panicked"))?
        .context("reading the guest's stderr")?;
    parsed.context("reading qemu's log")?;
    let counts = counter.finish();
    let what = || {
        format!(
            "qemu-aarch64 -cpu {cpu} {} {}",
            prog.display(),
            args.join(" ")
        )
    };
    if !status.success() {
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("{} failed ({status}): {}", what(), last.trim());
    }
    if counts.blocks_executed == 0 {
        bail!("{}: qemu wrote no exec trace", what());
    }
    let mut stdout = counter.other_lines().join("\n");
    stdout.push('\n');
    Ok(Run {
        counts,
        stdout,
        blocks: counter.blocks(),
        entry_pc: counter.start_pc(),
        marks: Vec::new(),
    })
}

/// Reads the file `tools/qemu-insn-plugin` writes: `start <hex>` (where `_start` was
/// translated) and one `block <hex pc> <insns> <execs>` line per translation that ran.
pub fn parse_plugin_output(text: &str) -> Result<Parsed> {
    let mut counts = Counts::default();
    let mut blocks = Vec::new();
    let mut entry = None;
    let mut marks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let bad = || anyhow!("qemu-insn-plugin output line {}: {line:?}", n + 1);
        match f.as_slice() {
            ["start", pc] => entry = Some(u64::from_str_radix(pc, 16).map_err(|_| bad())?),
            ["mark", hint, count] => marks.push((
                hint.parse().map_err(|_| bad())?,
                count.parse().map_err(|_| bad())?,
            )),
            ["block", pc, size, execs] => {
                let b = Block {
                    pc: u64::from_str_radix(pc, 16).map_err(|_| bad())?,
                    size: size.parse().map_err(|_| bad())?,
                    execs: execs.parse().map_err(|_| bad())?,
                };
                counts.instructions += u64::from(b.size) * b.execs;
                counts.blocks_executed += b.execs;
                counts.blocks_translated += 1;
                blocks.push(b);
            }
            [] => {}
            _ => return Err(bad()),
        }
    }
    Ok((counts, blocks, entry, marks))
}

/// Runs `qemu-aarch64 -cpu CPU -plugin PLUGIN,out=FILE PROG ARGS` with the counting
/// plugin of `tools/qemu-insn-plugin` (the same counts as [`run_counted`], hundreds of
/// times faster: no log).
pub fn run_plugin(plugin: &Path, cpu: &str, prog: &Path, args: &[String]) -> Result<Run> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "qemu-insn-{}-{}.txt",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let what = || {
        format!(
            "qemu-aarch64 -cpu {cpu} {} {}",
            prog.display(),
            args.join(" ")
        )
    };
    let res = Command::new("qemu-aarch64")
        .args(["-cpu", cpu, "-plugin"])
        .arg(format!("{},out={}", plugin.display(), out.display()))
        .arg(prog)
        .args(args)
        .env_remove("QEMU_CPU")
        .env_remove("QEMU_LOG")
        .env_remove("QEMU_LOG_FILENAME")
        .stdin(Stdio::null())
        .output()
        .context("cannot run qemu-aarch64 (install qemu-user)");
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    let res = res?;
    if !res.status.success() {
        let err = String::from_utf8_lossy(&res.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("{} failed ({}): {}", what(), res.status, last.trim());
    }
    let text = text.with_context(|| format!("{}: the plugin wrote no counts", what()))?;
    let (counts, blocks, entry_pc, marks) = parse_plugin_output(&text)?;
    if counts.blocks_executed == 0 {
        bail!("{}: the plugin counted nothing", what());
    }
    Ok(Run {
        counts,
        stdout: String::from_utf8_lossy(&res.stdout).into_owned(),
        blocks,
        entry_pc,
        marks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_trace_lines() {
        assert_eq!(hex_prefix(b"00400580:  d503201f"), Some(0x400580));
        assert_eq!(hex_prefix(b"zz"), None);
        assert_eq!(
            trace_pc(b"Trace 0: 0x7f34 [0000000000001001/0000000000400848/00000001/00000200] f"),
            Some(0x400848)
        );
    }
}
