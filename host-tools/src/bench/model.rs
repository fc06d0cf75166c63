//! One model's figures for `host-tools bench` ([`bench_model`]): MACs, qemu-user
//! instruction counts of every kernel set and of tract, the critical path over the cores,
//! llvm-mca estimates, host times, blob and arena sizes.

// The parent's types, helpers and imports (this is its per-model half).
use super::*;

/// Everything measured for one model.
pub(crate) struct Report {
    pub(crate) json: Value,
    pub(crate) text: String,
}

pub(crate) struct Ctx<'a> {
    pub(crate) bin: &'a Path,
    pub(super) out_dir: &'a Path,
    pub(super) quick: bool,
    pub(crate) method: &'a Method,
    /// The disassembled aarch64 convmixer-pi and its ELF entry address.
    pub(super) dis: &'a mca::Disasm,
    pub(super) entry: u64,
}

pub(super) fn bench_model(spec: &Spec, p: &Prepared, ctx: &Ctx<'_>) -> Result<Report> {
    let c = &spec.cfg;
    let macs = Macs::of(c);
    let tokens = (c.in_h / c.patch) * (c.in_w / c.patch);
    let model = Model::from_bytes(&p.blob_bytes).map_err(|e| anyhow!("blob: {e}"))?;
    let arena = model.arena_len();
    let act_bytes = tokens * c.dim;
    let big = spec.key == "B2";
    let mut skipped: Vec<String> = Vec::new();

    let pi = ctx.bin.join("convmixer-pi");
    let tr = ctx.bin.join("tract-runner");
    let pi_args_for = |blob: &Path, isa: &str| -> Vec<String> {
        vec![
            blob.display().to_string(),
            p.raw.display().to_string(),
            "--raw".into(),
            "--isa".into(),
            isa.into(),
            // One core: these are per-core instruction counts.
            "--threads".into(),
            "1".into(),
        ]
    };
    let pi_args = |isa: &str| pi_args_for(&p.blob, isa);
    let tr_args = vec![
        p.onnx.display().to_string(),
        "--shape".into(),
        format!("1,{},{},{}", c.in_c, c.in_h, c.in_w),
    ];
    let (lim80, limdot) = (macs.limit(8), macs.limit(16));
    let mut counts: Vec<Count> = Vec::new();
    let mut top: Vec<(String, String)> = Vec::new();
    let mut runs: Vec<(&'static str, Run)> = Vec::new();
    let mut count = |what: &'static str,
                     cpu: &'static str,
                     prog: &Path,
                     args: Vec<String>,
                     limit: Option<u64>,
                     run: bool,
                     why: &str|
     -> Result<()> {
        if !run {
            counts.push(Count {
                what,
                cpu,
                insns: None,
                limit,
                note: why.to_string(),
            });
            return Ok(());
        }
        let t0 = Instant::now();
        eprintln!("bench: {}: counting {what} on {cpu}…", spec.key);
        // Our runtime's counts are exact run to run, so N = 1. tract's start-up is not
        // deterministic (hash-map seeds): a few hundred thousand instructions either way,
        // which N = 4 divides down to about 0.1% of an inference.
        let reps = if prog.ends_with("tract-runner") { 4 } else { 1 };
        let (n, run) = per_inference(ctx.method, cpu, prog, &args, reps)?;
        eprintln!(
            "bench: {}: {what} on {cpu}: {} instructions per inference ({:.0}s)",
            spec.key,
            thousands(n),
            t0.elapsed().as_secs_f64()
        );
        if prog.ends_with("convmixer-pi") {
            // Only the int8 paths must agree (fp16 rounds differently).
            if what.starts_with("int8") {
                top.push((what.to_string(), top1(&run.stdout).unwrap_or_default()));
            }
            runs.push((what, run));
        }
        counts.push(Count {
            what,
            cpu,
            insns: Some(n),
            limit,
            note: String::new(),
        });
        Ok(())
    };
    count(
        "int8 SMLAL (--isa neon)",
        "cortex-a72",
        &pi,
        pi_args("neon"),
        Some(lim80),
        true,
        "",
    )?;
    count(
        "int8 SDOT (--isa dot)",
        "cortex-a76",
        &pi,
        pi_args("dot"),
        Some(limdot),
        true,
        "",
    )?;
    // What --quick leaves out (and the log counter, at about a microsecond per executed
    // block, cannot do for B2 in reasonable time).
    let slow = big && (ctx.quick || matches!(ctx.method, Method::Log));
    let why = if ctx.quick {
        "skipped (--quick)"
    } else {
        "skipped (--log-counter)"
    };
    if slow {
        skipped.push(format!(
            "the scalar and tract counts of {} ({})",
            spec.key,
            if ctx.quick {
                "--quick"
            } else {
                "--log-counter"
            }
        ));
    }
    count(
        "int8 scalar (--isa scalar)",
        "cortex-a72",
        &pi,
        pi_args("scalar"),
        None,
        !slow,
        why,
    )?;
    count(
        "tract fp32",
        "cortex-a72",
        &tr,
        tr_args.clone(),
        None,
        !slow,
        why,
    )?;
    count("tract fp32", "cortex-a76", &tr, tr_args, None, !slow, why)?;
    // The f16 blob: binary16 arithmetic where FEAT_FP16 is (max), f32 elsewhere (A72).
    count(
        "fp16 FMLA .8h (f16 arith)",
        "cortex-a76",
        &pi,
        pi_args_for(&p.blob_fp16, "dot"),
        Some(macs.limit_float(8)),
        !slow,
        why,
    )?;
    count(
        "fp16 FMLA .4s (f32 arith)",
        "cortex-a72",
        &pi,
        pi_args_for(&p.blob_fp16, "neon"),
        Some(macs.limit_float(4)),
        !slow,
        why,
    )?;
    // The kernels are bit-exact: every ISA must pick the same class.
    if let Some((_, first)) = top.first() {
        if let Some((what, other)) = top.iter().find(|(_, t)| t != first) {
            bail!(
                "{}: {what} printed top-1 {other}, the other paths {first}",
                spec.key
            );
        }
    }

    let reps = match (big, ctx.quick) {
        (true, true) => 1,
        (true, false) => 3,
        (false, true) => 3,
        (false, false) => 9,
    };
    eprintln!(
        "bench: {}: timing int8 and tract on the host ({reps} runs each)…",
        spec.key
    );
    let host = host_times(p, c, reps)?;
    let (ours, theirs) = (host.ours, host.tract);

    let insns = |what: &str, cpu: &str| {
        counts
            .iter()
            .find(|x| x.what.starts_with(what) && x.cpu == cpu)
            .and_then(|x| x.insns)
    };
    // Several cores: each split layer's busiest part, counted on one thread between the
    // plugin's markers (convmixer-pi --count-parts), against one core's count.
    let mut critical: Vec<Value> = Vec::new();
    for (what, cpu, isa) in [
        ("int8 SMLAL", "cortex-a72", "neon"),
        ("int8 SDOT", "cortex-a76", "dot"),
    ] {
        let Method::Plugin(_) = ctx.method else {
            break; // the log counter has no markers
        };
        eprintln!(
            "bench: {}: counting the critical path of {what} on {CORES} cores ({cpu})…",
            spec.key
        );
        let mut args = pi_args(isa);
        args.extend(["--count-parts".to_string(), CORES.to_string()]);
        let c = critical_path(ctx.method, cpu, &pi, &args)?;
        let one = insns(what, cpu);
        eprintln!(
            "bench: {}: {what} on {cpu}, {CORES} cores: critical path {} of {} instructions ({} on one core)",
            spec.key,
            thousands(c.path),
            thousands(c.split),
            one.map_or("?".into(), thousands)
        );
        critical.push(json!({
            "path": what,
            "cpu": cpu,
            "cores": CORES,
            "instructions_1core": one,
            "instructions_split_in_turn": c.split,
            "critical_path_instructions": c.path,
            "critical_path_over_1core": one.map(|o| c.path as f64 / o as f64),
            "joins_per_inference": c.joins,
            "handoff_instructions_per_part": HANDOFF,
            "join_instructions_per_layer": JOIN,
        }));
    }
    let mut loops: Vec<mca::LoopReport> = Vec::new();
    for (what, kinds) in [
        (
            "int8 SMLAL",
            &[mca::Kind::PwSmlal, mca::Kind::Depthwise][..],
        ),
        (
            "int8 SDOT",
            &[mca::Kind::PwSdot, mca::Kind::DepthwiseSdot][..],
        ),
    ] {
        let Some((_, run)) = runs.iter().find(|(w, _)| w.starts_with(what)) else {
            continue;
        };
        let base = run
            .entry_pc
            .and_then(|pc| pc.checked_sub(ctx.entry))
            .ok_or_else(|| {
                anyhow!("qemu reported no entry address: cannot place convmixer-pi's code")
            })?;
        let prof = mca::Profile::new(&run.blocks, base);
        let found = mca::hot_loops(ctx.dis, &prof, kinds)?;
        for k in kinds {
            if !found.iter().any(|l| l.kernel == *k) {
                skipped.push(format!(
                    "llvm-mca: no hot {k:?} loop found in the {what} run"
                ));
            }
        }
        loops.extend(found);
    }
    for l in &loops {
        let path = ctx
            .out_dir
            .join(format!("{}-{}.s", spec.key.to_lowercase(), l.key()));
        data::write_atomic(&path, l.asm.as_bytes())?;
    }
    let json = json!({
        "model": spec.key,
        "title": spec.title,
        "macs": macs.total(),
        "macs_embed": macs.embed,
        "macs_dw": macs.dw,
        "macs_pw": macs.pw,
        "macs_head": macs.head,
        "instructions_v80": insns("int8 SMLAL", "cortex-a72"),
        "instructions_dotprod": insns("int8 SDOT", "cortex-a76"),
        "instructions_scalar": insns("int8 scalar", "cortex-a72"),
        "tract_fp32_instructions": insns("tract", "cortex-a72"),
        "tract_fp32_instructions_a76": insns("tract", "cortex-a76"),
        "limit_v80": lim80,
        "limit_dotprod": limdot,
        "instructions_fp16": insns("fp16 FMLA .8h", "cortex-a76"),
        "instructions_fp16_f32_arith": insns("fp16 FMLA .4s", "cortex-a72"),
        "limit_fp16": macs.limit_float(8),
        "limit_f32": macs.limit_float(4),
        "host_int8_ms": ours.as_secs_f64() * 1e3,
        "host_tract_ms": theirs.as_secs_f64() * 1e3,
        "host_int8_over_tract": ours.as_secs_f64() / theirs.as_secs_f64(),
        "host_cores": host.cores,
        "host_int8_cores_ms": host.ours_cores.as_secs_f64() * 1e3,
        "host_cores_over_one_core": host.ours_cores.as_secs_f64() / ours.as_secs_f64(),
        "host_runs": reps,
        "blob_bytes": p.blob_bytes.len(),
        "arena_bytes": arena,
        "activation_bytes": act_bytes,
        "arena_over_activation": arena as f64 / act_bytes as f64,
        "mca": loops.iter().map(|l| l.json()).collect::<Vec<_>>(),
        "critical_path": critical,
        "skipped": skipped,
        "counter": ctx.method.name(),
    });

    let mut t = String::new();
    let _ = writeln!(t, "{}: {} (random weights)", spec.key, spec.title);
    let _ = writeln!(
        t,
        "  MACs per inference: {} = pointwise {} + depthwise {} + embed {} + head {}",
        thousands(macs.total()),
        thousands(macs.pw),
        thousands(macs.dw),
        thousands(macs.embed),
        thousands(macs.head)
    );
    let _ = writeln!(t, "  aarch64 instructions per inference (qemu-user):");
    let _ = writeln!(
        t,
        "    {:<28} {:<11} {:>15} {:>13} {:>9} {:>9}",
        "path", "-cpu", "instructions", "limit", "÷ limit", "MAC/insn"
    );
    for x in &counts {
        let (insns, ratio, per) = match x.insns {
            Some(n) => (
                thousands(n),
                x.limit
                    .map_or(String::new(), |l| format!("{:.2}x", n as f64 / l as f64)),
                format!("{:.2}", macs.total() as f64 / n as f64),
            ),
            None => (x.note.clone(), String::new(), String::new()),
        };
        let _ = writeln!(
            t,
            "    {:<28} {:<11} {:>15} {:>13} {:>9} {:>9}",
            x.what,
            x.cpu,
            insns,
            x.limit.map_or(String::new(), thousands),
            ratio,
            per
        );
    }
    let _ = writeln!(
        t,
        "    limit = int8: pointwise MACs / (8 SMLAL | 16 SDOT) + depthwise MACs / 8; fp16: (pointwise + depthwise MACs) / (8 FMLA .8h | 4 FMLA .4s); embed and head not counted"
    );
    let _ = writeln!(
        t,
        "    per inference = (count(2N) - count(N)) / N; N = 1 for int8 (exact), N = 4 for tract (its start-up varies by ~0.1%)"
    );
    if !loops.is_empty() {
        let _ = writeln!(
            t,
            "  llvm-mca-14 on the hottest innermost MAC loop of each kernel (found in the qemu runs above):"
        );
        let _ = writeln!(
            t,
            "    {:<30} {:>7} {:>7} {:>6} {:>5} {:<11} {:>10} {:>10} {:>5} {:>7}",
            "loop",
            "% MACs",
            "% insns",
            "insns",
            "MACs",
            "-mcpu",
            "cycles/it",
            "MAC/cycle",
            "peak",
            "% peak"
        );
        for l in &loops {
            for (n, e) in l.estimates.iter().enumerate() {
                let head = if n == 0 {
                    format!(
                        "    {:<30} {:>6.1}% {:>6.1}% {:>6} {:>5}",
                        l.name(),
                        100.0 * l.mac_share,
                        100.0 * l.insn_share,
                        l.insns.len(),
                        l.macs
                    )
                } else {
                    format!("    {:<30} {:>7} {:>7} {:>6} {:>5}", "", "", "", "", "")
                };
                let _ = writeln!(
                    t,
                    "{head} {:<11} {:>10.2} {:>10.2} {:>5} {:>6.1}%",
                    e.cpu,
                    e.cycles_per_iter,
                    l.macs as f64 / e.cycles_per_iter,
                    e.peak,
                    100.0 * e.fraction(l.macs)
                );
            }
        }
        let _ = writeln!(
            t,
            "    (% MACs / % insns: the loop's share of the MACs / instructions its qemu run executed; insns, MACs: one",
        );
        let _ = writeln!(
            t,
            "     iteration's hot path, as fed to llvm-mca (target/bench/{}-*.s); peak: MAC/cycle of SMLAL or SDOT.",
            spec.key.to_lowercase()
        );
        let _ = writeln!(
            t,
            "     LLVM 14 has no Cortex-A76 model: -mcpu=cortex-a76 uses its Cortex-A57/A72 model with the dot product.)"
        );
    }
    let _ = writeln!(
        t,
        "  x86_64 host, median of {reps}: int8 classify (best ISA) {:.2} ms on 1 core, {:.2} ms on {} cores ({:.2}x of 1 core), tract fp32 {:.2} ms: int8/tract = {:.2}",
        ours.as_secs_f64() * 1e3,
        host.ours_cores.as_secs_f64() * 1e3,
        host.cores,
        host.ours_cores.as_secs_f64() / ours.as_secs_f64(),
        theirs.as_secs_f64() * 1e3,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    for c in &critical {
        let _ = writeln!(
            t,
            "  {} cores, {} on {}: critical path {} instructions = {:.3} of one core's {}",
            CORES,
            c["path"].as_str().unwrap_or(""),
            c["cpu"].as_str().unwrap_or(""),
            c["critical_path_instructions"]
                .as_u64()
                .map_or("?".into(), thousands),
            c["critical_path_over_1core"].as_f64().unwrap_or(f64::NAN),
            c["instructions_1core"]
                .as_u64()
                .map_or("?".into(), thousands),
        );
    }
    let _ = writeln!(
        t,
        "  memory: blob {} bytes ({}), arena {} bytes, one int8 activation tensor {} bytes ({} tokens x {}), arena/activation {:.2}",
        thousands(p.blob_bytes.len() as u64),
        millions(p.blob_bytes.len() as u64),
        thousands(arena as u64),
        thousands(act_bytes as u64),
        tokens,
        c.dim,
        arena as f64 / act_bytes as f64
    );
    for s in &skipped {
        let _ = writeln!(t, "  skipped: {s}");
    }
    Ok(Report { json, text: t })
}
