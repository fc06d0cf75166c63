//! The bare-metal firmware (firmware/baremetal) booted under qemu-system-aarch64 on every
//! board it supports, with the shipped MNIST-digit int8 model and 20 held-out digits
//! compiled in: its defmt log (decoded on the host) must predict exactly the classes
//! `host-tools classify` predicts for the same blob and images, and it must exit with
//! success; a firmware built around a corrupted blob must report the error and exit with
//! failure. Each boot is bounded in time.
//!
//! Needs what scripts/install-toolchain.sh installs (Debian's rustc with the core source,
//! aarch64 binutils, qemu-system-aarch64 10).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use host_tools::flash::{self, Board};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The firmware builds into one target folder: the tests take turns.
static FIRMWARE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Two held-out digits of each class (PNG files), in a fixed order.
fn digits() -> Vec<PathBuf> {
    let dir = root().join("examples/mnist/heldout");
    let mut out = Vec::new();
    for class in 0..10 {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(class.to_string()))
            .expect("held-out digits")
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        // The 1st and the 7th of each class (any fixed choice would do).
        out.push(files[0].clone());
        out.push(files[6].clone());
    }
    out
}

/// What `host-tools classify` predicts for each image (top-1 class).
fn host_predictions(model: &Path, images: &[PathBuf]) -> Vec<u16> {
    let out = Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .arg("classify")
        .arg(model)
        .args(images)
        .args(["--json", "--top", "1"])
        .output()
        .expect("run host-tools classify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["top"][0]["class"].as_u64().expect("class") as u16
        })
        .collect()
}

/// The images as the firmware's compiled-in set: raw u8 pixels, concatenated.
fn raw_images(images: &[PathBuf], dir: &Path) -> PathBuf {
    let mut raw = Vec::new();
    for p in images {
        let img = image::open(p).expect("decode png").to_luma8();
        assert_eq!(img.dimensions(), (28, 28));
        raw.extend_from_slice(img.as_raw());
    }
    let path = dir.join("digits.raw");
    std::fs::write(&path, raw).expect("write raw images");
    path
}

fn boot(model: &Path, images: &Path, (board, cores): (Board, usize), cpu: &str) -> flash::Boot {
    let elf = flash::build(model, Some(images), (board, cores), true).expect("firmware build");
    flash::run_qemu(&elf, board, Some(cpu), BOOT_TIMEOUT).expect("qemu boot")
}

/// The stack high-water marks the firmware logged, `(core, bytes used, stack bytes)`.
fn stack_marks(log: &[String]) -> Vec<(usize, usize, usize)> {
    log.iter()
        .filter_map(|l| {
            let rest = l.split("stack high-water mark: core ").nth(1)?;
            let w: Vec<&str> = rest.split_whitespace().collect();
            match w.as_slice() {
                [core, used, "of", size, "B"] => {
                    Some((core.parse().ok()?, used.parse().ok()?, size.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn firmware_boots_and_matches_host_classify_on_every_board() {
    let _turn = FIRMWARE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = root().join("examples/mnist/convmixer-mnist-int8.cmx");
    let images = digits();
    let want = host_predictions(&model, &images);
    assert_eq!(want.len(), 20);
    // The model is good: most held-out digits are right (a sanity check of the inputs).
    let right = want
        .iter()
        .enumerate()
        .filter(|&(i, &c)| usize::from(c) == i / 2)
        .count();
    assert!(
        right >= 18,
        "host-tools classify got only {right}/20 digits right"
    );
    let raw = raw_images(&images, tmp.path());

    // (board, virt CPU, kernels the firmware must have detected, cores): every machine has
    // four cores (virt is booted with -smp 4); the firmware runs on one or on all four.
    let runs = [
        (Board::Virt, "cortex-a72", "kernels Neon;", 1),
        (Board::Virt, "cortex-a72", "kernels Neon;", 4),
        (Board::Virt, "max", "kernels NeonDot;", 4),
        (Board::Pi3, "", "kernels Neon;", 1),
        (Board::Pi3, "", "kernels Neon;", 4),
        (Board::Pi4, "", "kernels Neon;", 1),
        (Board::Pi4, "", "kernels Neon;", 4),
    ];
    for (board, cpu, kernels, cores) in runs {
        let b = boot(&model, &raw, (board, cores), cpu);
        let log = b.log.join("\n");
        assert!(
            b.ok,
            "{board} {cpu} {cores} cores: the firmware reported failure:\n{log}"
        );
        assert!(
            log.contains(&format!("cores: {cores} of {cores} requested")),
            "{board} {cpu}: {cores} cores not all used:\n{log}"
        );
        // Every core's stack high-water mark: the helpers ran (their stacks were used)
        // and none came near its end.
        let marks = stack_marks(&b.log);
        assert_eq!(
            marks.iter().map(|m| m.0).collect::<Vec<_>>(),
            (0..cores).collect::<Vec<_>>(),
            "{board} {cpu}: one stack mark per core expected:\n{log}"
        );
        for (core, used, size) in marks {
            assert!(
                used > 0 && used <= size / 2,
                "{board} {cpu}: core {core} used {used} of its {size}-byte stack:\n{log}"
            );
        }
        assert!(
            log.contains("model: 28x28x1 input, dim 48"),
            "{board}: no model line:\n{log}"
        );
        assert!(
            log.contains(kernels),
            "{board} {cpu}: expected {kernels}:\n{log}"
        );
        let got = flash::predictions(&b.log);
        let want_pairs: Vec<(usize, u16)> = want.iter().copied().enumerate().collect();
        assert_eq!(
            got, want_pairs,
            "{board} {cpu}: predictions differ from host-tools classify"
        );
        assert!(
            log.contains(&format!(
                "done: 20 compiled-in images classified on {cores} cores"
            )),
            "{board}:\n{log}"
        );
    }

    // A corrupted blob (one flipped bit past the header): reported over defmt, exit failure.
    let mut blob = std::fs::read(&model).expect("read model");
    let mid = blob.len() / 2;
    blob[mid] ^= 0x04;
    let bad = tmp.path().join("corrupt.cmx");
    std::fs::write(&bad, &blob).expect("write corrupt blob");
    let b = boot(&bad, &raw, (Board::Virt, 4), "cortex-a72");
    let log = b.log.join("\n");
    assert!(
        !b.ok,
        "a corrupted blob must make the firmware exit with failure:\n{log}"
    );
    assert!(
        log.contains("ERROR model blob rejected") && log.contains("CRC-32"),
        "the log must name the error:\n{log}"
    );
    assert!(flash::predictions(&b.log).is_empty());

    // The command line: the same failure is a non-zero exit with a one-line error.
    let out = Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .arg("flash")
        .arg(&bad)
        .args(["--board", "virt", "--qemu"])
        .output()
        .expect("run host-tools flash");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: the firmware reported failure on virt"),
        "{stderr}"
    );

    // qemu's own failure (status 1 as well) is not mistaken for the firmware's.
    let out = Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .arg("flash")
        .arg(&model)
        .args(["--board", "virt", "--qemu", "--cpu", "no-such-cpu"])
        .output()
        .expect("run host-tools flash");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: virt: qemu failed") && stderr.contains("no-such-cpu"),
        "{stderr}"
    );
}

#[test]
fn flash_writes_the_sd_card_files_for_a_raspberry_pi() {
    let _turn = FIRMWARE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("boot");
    let model = root().join("examples/mnist/convmixer-mnist-int8.cmx");
    let st = Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .arg("flash")
        .arg(&model)
        .args(["--board", "pi4", "--out"])
        .arg(&out)
        .status()
        .expect("run host-tools flash");
    assert!(st.success());
    let img = std::fs::read(out.join("kernel8.img")).expect("kernel8.img");
    // A raw image: the model blob is inside it, and it starts with code (no ELF header).
    assert!(!img.starts_with(b"\x7fELF"));
    let blob = std::fs::read(&model).expect("model");
    assert!(img.windows(blob.len()).any(|w| w == blob.as_slice()));
    let cfg = std::fs::read_to_string(out.join("config.txt")).expect("config.txt");
    assert!(cfg.contains("arm_64bit=1") && cfg.contains("kernel=kernel8.img"));
    assert!(out.join("convmixer-fw.elf").is_file());
}

/// The bare-metal firmware with an MLP-Mixer blob (qemu virt, a dot-product CPU): the same
/// classes as `host-tools classify`.
#[test]
fn firmware_runs_an_mlp_mixer() {
    let _turn = FIRMWARE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = root().join("examples/mixer-mnist/mixer-timm-int8.cmx");
    let images = digits();
    let want = host_predictions(&model, &images);
    let raw = raw_images(&images, tmp.path());
    let b = boot(&model, &raw, (Board::Virt, 4), "max");
    let log = b.log.join("\n");
    assert!(b.ok, "the firmware reported failure:\n{log}");
    assert!(
        log.contains("dim 64, depth 4") && log.contains("kernels NeonDot;"),
        "{log}"
    );
    let want_pairs: Vec<(usize, u16)> = want.iter().copied().enumerate().collect();
    assert_eq!(
        flash::predictions(&b.log),
        want_pairs,
        "predictions differ from host-tools classify"
    );
}

/// The Linux example (`firmware/linux`, `convmixer-pi`) cross-built for aarch64 and run
/// under qemu-user (ARMv8.0 and a dot-product CPU) predicts what `host-tools classify`
/// predicts, with `--repeat`: the MNIST ConvMixer and both MLP-Mixers.
#[test]
fn linux_example_under_qemu_user_matches_host_classify() {
    let images = digits();
    let target_dir = root().join("target/debian");
    let st = Command::new("cargo")
        .args(["+debian", "build", "--release", "-p", "convmixer-pi"])
        .args(["--target", "aarch64-unknown-linux-gnu"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .current_dir(root())
        .status()
        .expect("run cargo +debian");
    assert!(st.success(), "cross build of convmixer-pi failed");
    let exe = target_dir.join("aarch64-unknown-linux-gnu/release/convmixer-pi");
    for model in [
        "examples/mnist/convmixer-mnist-int8.cmx",
        "examples/mixer-mnist/mixer-lucid-int8.cmx",
        "examples/mixer-mnist/mixer-timm-int8.cmx",
    ] {
        let model = root().join(model);
        let want = host_predictions(&model, &images);
        let right = want
            .iter()
            .enumerate()
            .filter(|&(i, &c)| usize::from(c) == i / 2)
            .count();
        assert!(
            right >= 18,
            "{}: host-tools classify got only {right}/20 digits right",
            model.display()
        );
        // One core, and four (each layer split four ways on four threads).
        for (cpu, threads) in [
            ("cortex-a72", "1"),
            ("cortex-a72", "4"),
            ("max", "1"),
            ("max", "4"),
        ] {
            let out = Command::new("qemu-aarch64")
                .args(["-cpu", cpu])
                .arg(&exe)
                .arg(&model)
                .args(&images)
                .args(["--repeat", "2", "--threads", threads])
                .output()
                .expect("run qemu-aarch64");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got: Vec<u16> = String::from_utf8(out.stdout)
                .expect("utf-8")
                .lines()
                .map(|l| {
                    // "PATH: LABEL P, LABEL P, …" with the MNIST labels "0".."9".
                    let best = l.rsplit_once(": ").expect("a result line").1;
                    best.split(' ')
                        .next()
                        .and_then(|c| c.parse().ok())
                        .expect("a class")
                })
                .collect();
            assert_eq!(
                got,
                want,
                "{} -cpu {cpu} --threads {threads}: convmixer-pi differs from host-tools classify",
                model.display()
            );
        }
    }
}

/// A firmware built for a real board (no semihosting, no compiled-in images) classifies the
/// raw images it receives on its UART: the same classes as `host-tools classify`.
#[test]
fn firmware_classifies_images_received_on_the_uart() {
    let _turn = FIRMWARE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = root().join("examples/mnist/convmixer-mnist-int8.cmx");
    let images = digits();
    let want = host_predictions(&model, &images);
    let raw = std::fs::read(raw_images(&images, tmp.path())).expect("raw images");
    let elf = flash::build(&model, None, (Board::Virt, 4), false).expect("firmware build");
    let log = flash::run_qemu_serial(&elf, Board::Virt, &raw, want.len(), BOOT_TIMEOUT)
        .expect("qemu boot");
    let joined = log.join("\n");
    assert!(
        joined.contains("now send images on the UART: 784 raw bytes each"),
        "{joined}"
    );
    let want_pairs: Vec<(usize, u16)> = want.iter().copied().enumerate().collect();
    assert_eq!(flash::predictions(&log), want_pairs, "{joined}");
}
