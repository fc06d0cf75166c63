//! Static cycle estimates of the int8 kernels' hot loops: disassemble the aarch64
//! `convmixer-pi` binary, find the innermost loops that do the multiply-accumulates, keep
//! each one's hot path, and feed it to `llvm-mca-14`.
//!
//! Loops are natural loops of each function's control-flow graph, picked by what they
//! execute in a qemu run of the program ([`Profile`]), not by symbol (the kernels are
//! inlined and monomorphised as the compiler likes): a loop with `SDOT` belongs to the
//! pointwise SDOT kernel, one with `SMULL`/`SMLAL` and `SADALP` to the pointwise SMLAL
//! kernel, one with `SMULL`/`SMLAL` and `SADDW` to the depthwise kernel; of each kind the
//! loop that executed the most MACs is reported. Only functions of `convmixer_edge`
//! outside the ops' `reference` modules (`kernels::<op>::reference::…`) are searched (the
//! scalar reference kernels, which LLVM may auto-vectorise, are left out where they are not
//! inlined).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use host_tools::qemu_count::Block;
use serde_json::{json, Value};

/// Which kernel a loop belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Pointwise, `SDOT` (ARMv8.2 dot product).
    PwSdot,
    /// Pointwise, `SMULL`/`SMLAL` + `SADALP` (ARMv8.0).
    PwSmlal,
    /// Depthwise, `SMULL`/`SMLAL` + `SADDW`.
    Depthwise,
    /// Depthwise, `SDOT` by vector (4 kernel rows per lane, slice-wise driver).
    DepthwiseSdot,
}

/// One disassembled instruction.
#[derive(Clone, Debug)]
pub struct Insn {
    addr: u64,
    mnemonic: String,
    operands: String,
}

/// One llvm-mca estimate.
#[derive(Clone, Debug)]
pub struct Estimate {
    /// `-mcpu`.
    pub cpu: &'static str,
    /// Total cycles / iterations.
    pub cycles_per_iter: f64,
    /// The core's MAC peak per cycle for this kind of instruction.
    pub peak: u32,
}

impl Estimate {
    /// Fraction of the MAC peak a loop body of `macs` reaches.
    pub fn fraction(&self, macs: u64) -> f64 {
        macs as f64 / (self.cycles_per_iter * f64::from(self.peak))
    }
}

/// One hot loop and its estimates.
#[derive(Clone, Debug)]
pub struct LoopReport {
    /// The kernel.
    pub kernel: Kind,
    /// Enclosing function (demangled).
    pub function: String,
    /// The loop body as fed to llvm-mca (nested loops without MACs left out).
    pub insns: Vec<Insn>,
    /// Instructions of nested non-MAC loops left out of `insns`.
    pub nested_left_out: usize,
    /// Instructions of the loop left out as cold (run less than half as often as its MACs).
    pub cold_left_out: usize,
    /// Iterations in the run (executions of its hottest MAC instruction).
    pub iterations: u64,
    /// MACs the loop executed in the run.
    pub dyn_macs: u64,
    /// Share of all MACs executed by MAC instructions of `convmixer_edge` in the run.
    pub mac_share: f64,
    /// Share of all instructions the run executed that were this loop's (nested loops
    /// left out).
    pub insn_share: f64,
    /// MACs in one iteration.
    pub macs: u64,
    /// Depthwise: taps per iteration (`macs / 16`); 0 otherwise.
    pub taps: usize,
    /// llvm-mca estimates.
    pub estimates: Vec<Estimate>,
    /// The llvm-mca input (the loop body in assembler syntax).
    pub asm: String,
}

impl LoopReport {
    /// File-name friendly kernel name.
    pub fn key(&self) -> &'static str {
        match self.kernel {
            Kind::PwSdot => "pw-sdot",
            Kind::PwSmlal => "pw-smlal",
            Kind::Depthwise => "dw",
            Kind::DepthwiseSdot => "dw-sdot",
        }
    }

    /// Short name for tables.
    pub fn name(&self) -> String {
        match self.kernel {
            Kind::PwSdot => "pointwise SDOT (gemm_sdot_tile4)".into(),
            Kind::PwSmlal => "pointwise SMLAL (smlal_token)".into(),
            Kind::DepthwiseSdot => "depthwise SDOT (dw_sdot_rows)".into(),
            Kind::Depthwise => format!("depthwise SMLAL (dw_smlal_rows), {} taps/it", self.taps),
        }
    }

    /// The loop as JSON.
    pub fn json(&self) -> Value {
        json!({
            "loop": self.name(),
            "function": self.function,
            "start": format!("{:#x}", self.insns.first().map_or(0, |i| i.addr)),
            "insns": self.insns.len(),
            "nested_left_out": self.nested_left_out,
            "cold_left_out": self.cold_left_out,
            "iterations": self.iterations,
            "mac_share": self.mac_share,
            "insn_share": self.insn_share,
            "macs_per_iter": self.macs,
            "estimates": self.estimates.iter().map(|e| json!({
                "mcpu": e.cpu,
                "cycles_per_iter": e.cycles_per_iter,
                "mac_per_cycle": self.macs as f64 / e.cycles_per_iter,
                "peak": e.peak,
                "fraction_of_peak": e.fraction(self.macs),
            })).collect::<Vec<_>>(),
        })
    }
}

/// MACs one instruction performs: `SDOT` 16, `SMULL{2}`/`SMLAL{2}` on bytes 8.
fn macs_of(i: &Insn) -> u64 {
    let bytes = i.operands.contains(".8b") || i.operands.contains(".16b");
    match i.mnemonic.as_str() {
        "sdot" => 16,
        "smull" | "smull2" | "smlal" | "smlal2" if bytes => 8,
        _ => 0,
    }
}

fn is_branch(m: &str) -> bool {
    m == "b" || m.starts_with("b.") || matches!(m, "cbz" | "cbnz" | "tbz" | "tbnz")
}

/// The target address of a direct branch: the hex number before `<sym+off>`.
fn branch_target(operands: &str) -> Option<u64> {
    let before = operands.split('<').next()?;
    let last = before.split([',', ' ']).rfind(|t| !t.is_empty())?;
    u64::from_str_radix(last.trim_start_matches("0x"), 16).ok()
}

/// A function of the disassembly.
struct Function {
    name: String,
    insns: Vec<Insn>,
}

fn parse_objdump(text: &str) -> Vec<Function> {
    let mut out: Vec<Function> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_suffix(">:") {
            if let Some((addr, name)) = rest.split_once(" <") {
                if u64::from_str_radix(addr, 16).is_ok() {
                    out.push(Function {
                        name: name.to_string(),
                        insns: Vec::new(),
                    });
                }
            }
            continue;
        }
        let Some(f) = out.last_mut() else { continue };
        let Some((addr, rest)) = line.trim_start().split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        let mut parts = rest.splitn(2, '\t');
        let mnemonic = parts.next().unwrap_or("").trim().to_string();
        let operands = parts.next().unwrap_or("").trim().to_string();
        if mnemonic.is_empty() || mnemonic.starts_with('.') {
            continue;
        }
        f.insns.push(Insn {
            addr,
            mnemonic,
            operands,
        });
    }
    out
}

/// Control-flow graph of one function: basic blocks as instruction index ranges.
struct Cfg {
    /// `[start, end)` instruction indices.
    blocks: Vec<(usize, usize)>,
    /// Successor blocks.
    succ: Vec<Vec<usize>>,
}

/// Whether control can go on to the next instruction after `m`.
fn falls_through(m: &str) -> bool {
    !(m == "b" || m == "br" || m == "ret" || m == "eret")
}

fn cfg_of(f: &Function) -> Cfg {
    let n = f.insns.len();
    let index = |addr: u64| f.insns.binary_search_by_key(&addr, |i| i.addr).ok();
    let mut leader = vec![false; n + 1];
    leader[0] = true;
    leader[n] = true;
    for (j, i) in f.insns.iter().enumerate() {
        let m = i.mnemonic.as_str();
        if is_branch(m) || matches!(m, "br" | "ret" | "eret") {
            leader[j + 1] = true;
            if let Some(t) = branch_target(&i.operands).and_then(index) {
                leader[t] = true;
            }
        }
    }
    let starts: Vec<usize> = (0..n).filter(|&j| leader[j]).collect();
    let blocks: Vec<(usize, usize)> = starts
        .iter()
        .enumerate()
        .map(|(b, &s)| (s, starts.get(b + 1).copied().unwrap_or(n)))
        .collect();
    let block_of = |j: usize| starts.partition_point(|&s| s <= j) - 1;
    let succ = blocks
        .iter()
        .map(|&(_, e)| {
            let last = &f.insns[e - 1];
            let mut v = Vec::new();
            if is_branch(&last.mnemonic) {
                if let Some(t) = branch_target(&last.operands).and_then(index) {
                    v.push(block_of(t));
                }
            }
            if e < n && falls_through(&last.mnemonic) {
                v.push(block_of(e));
            }
            v
        })
        .collect();
    Cfg { blocks, succ }
}

/// Natural loops (one per header, back edges = branches to an earlier or the same
/// address), as sorted block lists.
fn loops_of(f: &Function) -> (Cfg, Vec<Vec<usize>>) {
    let cfg = cfg_of(f);
    let nb = cfg.blocks.len();
    let mut pred = vec![Vec::new(); nb];
    for (b, ss) in cfg.succ.iter().enumerate() {
        for &s in ss {
            pred[s].push(b);
        }
    }
    let mut by_header: Vec<Option<Vec<bool>>> = vec![None; nb];
    for (latch, ss) in cfg.succ.iter().enumerate() {
        for &h in ss {
            if cfg.blocks[h].0 > cfg.blocks[latch].0 {
                continue;
            }
            let body = by_header[h].get_or_insert_with(|| vec![false; nb]);
            body[h] = true;
            let mut stack = vec![latch];
            while let Some(b) = stack.pop() {
                if !body[b] {
                    body[b] = true;
                    stack.extend(pred[b].iter().copied());
                }
            }
        }
    }
    let loops = by_header
        .into_iter()
        .flatten()
        .map(|body| (0..nb).filter(|&b| body[b]).collect())
        .collect();
    (cfg, loops)
}

fn kind_of(body: &[Insn]) -> Option<Kind> {
    let has = |m: &str| body.iter().any(|i| i.mnemonic.starts_with(m));
    let sdot: Vec<&Insn> = body.iter().filter(|i| i.mnemonic == "sdot").collect();
    if !sdot.is_empty() {
        // By element (`v.4b[i]`): the GEMM; by vector: the slice-wise depthwise.
        if sdot.iter().any(|i| i.operands.contains('[')) {
            Some(Kind::PwSdot)
        } else {
            Some(Kind::DepthwiseSdot)
        }
    } else if !body.iter().any(|i| macs_of(i) > 0) {
        None
    } else if has("sadalp") {
        Some(Kind::PwSmlal)
    } else if has("saddw") {
        Some(Kind::Depthwise)
    } else {
        None
    }
}

/// One instruction in llvm-mca's input syntax: comments dropped, branch targets as labels.
fn asm_line(i: &Insn, loop_start: u64) -> String {
    let ops = i.operands.split("//").next().unwrap_or("").trim();
    if is_branch(&i.mnemonic) || i.mnemonic == "bl" || i.mnemonic == "adr" {
        if let Some(t) = branch_target(ops) {
            let label = if t == loop_start { ".Lloop" } else { ".Lother" };
            let before = ops.split('<').next().unwrap_or("").trim_end();
            let keep = before
                .rsplit_once([',', ' '])
                .map_or(String::new(), |(a, _)| {
                    format!("{}, ", a.trim_end_matches([',', ' ']))
                });
            return format!("\t{}\t{keep}{label}", i.mnemonic);
        }
    }
    if i.mnemonic == "adrp" {
        let reg = ops.split(',').next().unwrap_or("x0");
        return format!("\tadrp\t{reg}, .Lother");
    }
    let ops = ops.split(" <").next().unwrap_or(ops);
    format!("\t{}\t{}", i.mnemonic, ops)
}

fn llvm_mca(asm: &str, cpu: &str) -> Result<f64> {
    let mut child = Command::new("llvm-mca-14")
        .args([
            "-mtriple=aarch64",
            &format!("-mcpu={cpu}"),
            "-iterations=200",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run llvm-mca-14 (install llvm-14)")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(asm.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "llvm-mca-14 -mcpu={cpu} failed: {}",
            err.lines()
                .find(|l| l.contains("error"))
                .unwrap_or("")
                .trim()
        );
    }
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let (iters, cycles) = field("Iterations:")
        .zip(field("Total Cycles:"))
        .ok_or_else(|| anyhow!("llvm-mca-14: no cycle count in its report"))?;
    Ok(cycles / iters)
}

/// The disassembled functions of `convmixer_edge` (outside the kernels' `reference`
/// modules: [`searched`]) in a binary.
pub struct Disasm {
    funcs: Vec<Function>,
}

/// Disassembles `bin` with `aarch64-linux-gnu-objdump`.
pub fn disassemble(bin: &Path) -> Result<Disasm> {
    let out = Command::new("aarch64-linux-gnu-objdump")
        .args(["-d", "--no-show-raw-insn", "-C"])
        .arg(bin)
        .output()
        .context("cannot run aarch64-linux-gnu-objdump (install binutils-aarch64-linux-gnu)")?;
    if !out.status.success() {
        bail!(
            "aarch64-linux-gnu-objdump -d {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let funcs: Vec<Function> = parse_objdump(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|f| searched(&f.name))
        .collect();
    if funcs.is_empty() {
        bail!(
            "{}: no convmixer_edge functions (built without symbols?)",
            bin.display()
        );
    }
    Ok(Disasm { funcs })
}

/// Whether the function `name` (a demangled symbol) is searched for kernel loops: those of
/// `convmixer_edge`, except the scalar reference kernels, which live in each op's
/// `reference` module (`convmixer_edge::kernels::gemm_i8::reference::gemm_i8`; a SIMD kernel
/// whose generic arguments name a reference type is searched).
fn searched(name: &str) -> bool {
    let path = name.split("::<").next().unwrap_or(name);
    name.contains("convmixer_edge::") && !path.contains("::reference::")
}

/// Executions of each instruction (file addresses of the binary), from a qemu run.
pub struct Profile {
    counts: HashMap<u64, u64>,
    total: u64,
}

impl Profile {
    /// Spreads each executed block's count over its instructions; `base` is the load
    /// address of the binary (subtracted).
    pub fn new(blocks: &[Block], base: u64) -> Profile {
        let mut counts = HashMap::new();
        for b in blocks
            .iter()
            .filter(|b| b.pc >= base && b.pc - base < 1 << 40)
        {
            for k in 0..u64::from(b.size) {
                *counts.entry(b.pc - base + 4 * k).or_insert(0) += b.execs;
            }
        }
        let total = blocks.iter().map(|b| u64::from(b.size) * b.execs).sum();
        Profile { counts, total }
    }

    fn of(&self, addr: u64) -> u64 {
        self.counts.get(&addr).copied().unwrap_or(0)
    }
}

/// The hottest innermost MAC loop of each of `kinds` in a run, each estimated by llvm-mca.
///
/// A loop is a natural loop of the function's control-flow graph; nested loops without
/// MACs (e.g. a scalar epilogue) are left out; of the rest only instructions executed at
/// least half as often as the loop's MAC instructions are kept (the hot path).
pub fn hot_loops(d: &Disasm, prof: &Profile, kinds: &[Kind]) -> Result<Vec<LoopReport>> {
    let mut found: Vec<LoopReport> = Vec::new();
    let mut all_macs = 0u64;
    for f in &d.funcs {
        all_macs += f
            .insns
            .iter()
            .map(|i| macs_of(i) * prof.of(i.addr))
            .sum::<u64>();
        let (cfg, loops) = loops_of(f);
        let insns_of = |blocks: &[usize]| -> Vec<usize> {
            blocks
                .iter()
                .flat_map(|&b| cfg.blocks[b].0..cfg.blocks[b].1)
                .collect()
        };
        let has_macs = |l: &Vec<usize>| insns_of(l).iter().any(|&j| macs_of(&f.insns[j]) > 0);
        let subset =
            |a: &Vec<usize>, b: &Vec<usize>| a.len() < b.len() && a.iter().all(|x| b.contains(x));
        for l in loops.iter().filter(|l| has_macs(l)) {
            // Innermost: no other loop with MACs inside this one.
            if loops.iter().any(|o| subset(o, l) && has_macs(o)) {
                continue;
            }
            let nested: Vec<usize> = loops
                .iter()
                .filter(|o| subset(o, l))
                .flat_map(|o| o.iter().copied())
                .collect();
            let kept: Vec<usize> = l.iter().copied().filter(|b| !nested.contains(b)).collect();
            let idx = insns_of(&kept);
            let iterations = idx
                .iter()
                .filter(|&&j| macs_of(&f.insns[j]) > 0)
                .map(|&j| prof.of(f.insns[j].addr))
                .max()
                .unwrap_or(0);
            if iterations == 0 {
                continue;
            }
            let dyn_insns: u64 = idx.iter().map(|&j| prof.of(f.insns[j].addr)).sum();
            let dyn_macs: u64 = idx
                .iter()
                .map(|&j| macs_of(&f.insns[j]) * prof.of(f.insns[j].addr))
                .sum();
            let body: Vec<Insn> = idx
                .iter()
                .filter(|&&j| 2 * prof.of(f.insns[j].addr) >= iterations)
                .map(|&j| f.insns[j].clone())
                .collect();
            let Some(kernel) = kind_of(&body) else {
                continue;
            };
            let macs: u64 = body.iter().map(macs_of).sum();
            found.push(LoopReport {
                kernel,
                function: f.name.clone(),
                nested_left_out: insns_of(l).len() - idx.len(),
                cold_left_out: idx.len() - body.len(),
                insns: body,
                macs,
                taps: if kernel == Kind::Depthwise {
                    (macs / 16) as usize
                } else {
                    0
                },
                iterations,
                dyn_macs,
                mac_share: 0.0,
                insn_share: dyn_insns as f64 / prof.total.max(1) as f64,
                estimates: Vec::new(),
                asm: String::new(),
            });
        }
    }
    let mut picked: Vec<LoopReport> = Vec::new();
    for &kind in kinds {
        if let Some(l) = found
            .iter()
            .filter(|l| l.kernel == kind)
            .max_by_key(|l| l.dyn_macs)
        {
            let mut l = l.clone();
            l.mac_share = l.dyn_macs as f64 / all_macs.max(1) as f64;
            picked.push(l);
        }
    }
    for l in &mut picked {
        let start = l.insns.first().map_or(0, |i| i.addr);
        let mut asm = String::from(".Lloop:\n");
        for i in &l.insns {
            asm.push_str(&asm_line(i, start));
            asm.push('\n');
        }
        asm.push_str(".Lother:\n");
        l.asm = asm.clone();
        let cpus: &[(&str, u32)] = match l.kernel {
            Kind::PwSdot | Kind::DepthwiseSdot => &[("cortex-a76", 32)],
            // LLVM 14 models the A76 with its A57/A72 model: an A76 row would repeat A72's.
            Kind::PwSmlal | Kind::Depthwise => &[("cortex-a53", 8), ("cortex-a72", 8)],
        };
        for &(cpu, peak) in cpus {
            let cycles =
                llvm_mca(&asm, cpu).with_context(|| format!("{} at {start:#x}", l.name()))?;
            l.estimates.push(Estimate {
                cpu,
                cycles_per_iter: cycles,
                peak,
            });
        }
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
0000000000001000 <convmixer_edge::kernels::gemm_i8::neon::gemm_sdot_tile4>:
    1000:\tmovi\tv0.2d, #0x0
    1004:\tldr\tq1, [x0], #16
    1008:\tsdot\tv0.4s, v1.16b, v2.4b[0]
    100c:\tsubs\tx1, x1, #0x1
    1010:\tb.ne\t1004 <convmixer_edge::kernels::gemm_i8::neon::gemm_sdot_tile4+0x4>  // b.any
    1014:\tret
";

    #[test]
    fn finds_the_loop() {
        let f = parse_objdump(DUMP);
        assert_eq!(f.len(), 1);
        let (cfg, l) = loops_of(&f[0]);
        assert_eq!(cfg.blocks, [(0, 1), (1, 5), (5, 6)]);
        assert_eq!(l, [vec![1]]);
        assert_eq!(kind_of(&f[0].insns[1..=4]), Some(Kind::PwSdot));
        assert_eq!(asm_line(&f[0].insns[4], 0x1004), "\tb.ne\t.Lloop");
        assert_eq!(branch_target("w0, #3, 1234 <f+0x4>"), Some(0x1234));
        assert!(searched(&f[0].name));
    }

    /// The reference kernels (in each op's `reference` module) are left out, the SIMD
    /// kernels and drivers beside them searched.
    #[test]
    fn leaves_out_the_reference_kernels() {
        assert!(!searched(
            "convmixer_edge::kernels::gemm_i8::reference::gemm_i8"
        ));
        assert!(!searched(
            "convmixer_edge::kernels::dw_i8::reference::dw_token_i8::<dyn Fn>"
        ));
        assert!(searched(
            "convmixer_edge::kernels::dw_i8::neon::dw_smlal_rows::<7, false>"
        ));
        assert!(searched("convmixer_edge::kernels::gemm_i8::pw_i8_inplace"));
        assert!(searched(
            "convmixer_edge::kernels::pw_f::neon::pw::<convmixer_edge::kernels::float::reference::F32Arith>"
        ));
        assert!(!searched("core::ptr::drop_in_place"));
    }
}
