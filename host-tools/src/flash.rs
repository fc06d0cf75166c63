//! `host-tools flash`: builds the bare-metal firmware (`firmware/baremetal`) around a model
//! blob, writes what goes on the board, and can boot it under qemu-system-aarch64 with its
//! defmt log decoded on the host.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use convmixer_quantize::data::write_atomic;

/// A board the firmware supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    /// qemu's `virt` machine (ELF, EL1, PL011 at 0x0900_0000).
    Virt,
    /// Raspberry Pi 3 (`kernel8.img`, EL2, PL011 at 0x3F20_1000).
    Pi3,
    /// Raspberry Pi 4 (`kernel8.img`, EL2, PL011 at 0xFE20_1000).
    Pi4,
}

impl Board {
    /// The firmware crate's feature for this board.
    pub fn feature(self) -> &'static str {
        match self {
            Board::Virt => "virt",
            Board::Pi3 => "pi3",
            Board::Pi4 => "pi4",
        }
    }

    /// Parses `virt`, `pi3` or `pi4`.
    pub fn parse(s: &str) -> Result<Board> {
        match s {
            "virt" => Ok(Board::Virt),
            "pi3" => Ok(Board::Pi3),
            "pi4" => Ok(Board::Pi4),
            _ => bail!("--board {s}: expected virt, pi3 or pi4"),
        }
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.feature())
    }
}

/// The repository's firmware crate.
fn firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/baremetal")
}

/// Builds the firmware for `board` and `cores` cores (1–4) with `model` (and the raw
/// `images`, `input_len` bytes each) compiled in; `semihosting` reports the exit status to
/// qemu (never for a real board). Returns the ELF.
pub fn build(
    model: &Path,
    images: Option<&Path>,
    (board, cores): (Board, usize),
    semihosting: bool,
) -> Result<PathBuf> {
    let abs = |p: &Path| {
        std::fs::canonicalize(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let model = abs(model)?;
    let dir = firmware_dir();
    let mut features = board.feature().to_string();
    if semihosting {
        features.push_str(",semihosting");
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["+debian", "build", "--release", "--features", &features])
        .current_dir(&dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CMX_MODEL", &model)
        .env("CMX_CORES", cores.to_string())
        .env_remove("CMX_IMAGES")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::null());
    if let Some(images) = images {
        cmd.env("CMX_IMAGES", abs(images)?);
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .context("cannot run cargo +debian (scripts/install-toolchain.sh installs it)")?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        bail!(
            "firmware build for {board} failed: {}",
            build_failure(&log).unwrap_or_else(|| format!("cargo exited with {}", out.status))
        );
    }
    Ok(dir.join("target/aarch64-unknown-none/release/convmixer-fw"))
}

/// The reason in a failed firmware build's cargo log, as one line: the build script's own
/// message (what it panics with: a blob that does not fit the board's memory, an unreadable
/// image file), else cargo's first `error: …` line.
fn build_failure(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let panic = lines
        .iter()
        .position(|l| l.starts_with("thread 'main' panicked at"))
        .and_then(|i| lines.get(i + 1))
        .filter(|l| !l.is_empty());
    panic
        .or_else(|| lines.iter().find(|l| l.starts_with("error")))
        .map(|l| l.to_string())
}

/// The raw image a Raspberry Pi's GPU firmware loads at 0x8_0000.
fn kernel8(elf: &Path) -> Result<Vec<u8>> {
    let tmp = elf.with_extension("img.tmp");
    let status = Command::new("aarch64-linux-gnu-objcopy")
        .args(["-O", "binary"])
        .arg(elf)
        .arg(&tmp)
        .status()
        .context("cannot run aarch64-linux-gnu-objcopy")?;
    if !status.success() {
        bail!("aarch64-linux-gnu-objcopy failed ({status})");
    }
    let img = std::fs::read(&tmp).with_context(|| format!("{}: cannot read", tmp.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(img)
}

/// config.txt for the boot partition: 64-bit, our kernel8.img, the PL011 on GPIO 14/15 at
/// the clock the firmware assumes.
const CONFIG_TXT: &str = "\
# convmixer-edge firmware (written by host-tools flash)
arm_64bit=1
kernel=kernel8.img
enable_uart=1
# The PL011 (UART0) on GPIO 14/15 instead of Bluetooth, at 48 MHz (115200 8N1).
dtoverlay=disable-bt
init_uart_clock=48000000
";

/// Writes the files to copy to the board: `kernel8.img` + `config.txt` for a Raspberry Pi,
/// the ELF for virt, and always `convmixer-fw.elf` (the defmt decoder needs it). Returns
/// the written paths.
pub fn write_outputs(elf: &Path, board: Board, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let elf_bytes =
        std::fs::read(elf).with_context(|| format!("{}: cannot read", elf.display()))?;
    let mut written = Vec::new();
    let p = out.join("convmixer-fw.elf");
    write_atomic(&p, &elf_bytes)?;
    written.push(p);
    if board != Board::Virt {
        let p = out.join("kernel8.img");
        write_atomic(&p, &kernel8(elf)?)?;
        written.push(p);
        let p = out.join("config.txt");
        write_atomic(&p, CONFIG_TXT.as_bytes())?;
        written.push(p);
    }
    Ok(written)
}

/// What a qemu boot gave: whether the firmware exited with status 0, and its decoded log.
pub struct Boot {
    /// The firmware reported success (semihosting exit status 0).
    pub ok: bool,
    /// The defmt log, one `LEVEL message` line per frame.
    pub log: Vec<String>,
}

/// The qemu command line that boots `elf` on `board` with the UART on stdin/stdout
/// (`cpu` picks the virt CPU, default cortex-a72; a Raspberry Pi boots its raw
/// `kernel8.img`, written next to the ELF).
fn qemu_command(elf: &Path, board: Board, cpu: Option<&str>) -> Result<Command> {
    let mut cmd = Command::new("qemu-system-aarch64");
    match board {
        Board::Virt => {
            // Four cores, as on every Raspberry Pi since the Pi 2 (the raspi machines have
            // four of their own).
            let cpu = cpu.unwrap_or("cortex-a72");
            cmd.args([
                "-M", "virt", "-cpu", cpu, "-smp", "4", "-m", "1G", "-kernel",
            ])
            .arg(elf);
        }
        Board::Pi3 | Board::Pi4 => {
            let img = elf.with_extension("kernel8.img");
            write_atomic(&img, &kernel8(elf)?)?;
            let machine = if board == Board::Pi3 {
                "raspi3b"
            } else {
                "raspi4b"
            };
            cmd.args(["-M", machine, "-kernel"]).arg(&img);
        }
    }
    cmd.args(["-nic", "none", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// A running qemu that is killed (and reaped) when dropped, whatever path returns.
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Reads a child's pipe to the end on a thread (so a chatty qemu never blocks on it).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        bytes
    })
}

/// Boots the firmware under `qemu-system-aarch64` (built with `semihosting`), bounded by
/// `timeout`, and decodes its defmt log with the ELF's table.
pub fn run_qemu(elf: &Path, board: Board, cpu: Option<&str>, timeout: Duration) -> Result<Boot> {
    let mut cmd = qemu_command(elf, board, cpu)?;
    cmd.arg("-semihosting").stdin(Stdio::null());
    let mut child = Qemu(
        cmd.spawn()
            .context("cannot run qemu-system-aarch64 (scripts/install-toolchain.sh installs it)")?,
    );
    let stdout = drain(
        child
            .0
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no qemu stdout"))?,
    );
    let stderr = drain(
        child
            .0
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no qemu stderr"))?,
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            bail!(
                "{board}: the firmware did not finish within {} s under qemu",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let bytes = stdout
        .join()
        .map_err(|_| anyhow!("qemu output reader panicked"))?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("qemu error reader panicked"))?;
    let stderr = String::from_utf8_lossy(&stderr);
    let log = decode_defmt(elf, &bytes)?;
    // Status 1 is both the firmware's failure (semihosting) and qemu's own errors: only a
    // firmware that started (its banner line) can have reported failure.
    let started = log.iter().any(|l| l.contains("convmixer-fw"));
    let firmware_status = status.success() || (status.code() == Some(1) && started);
    if !firmware_status {
        bail!("{board}: qemu failed ({status}): {}", stderr.trim());
    }
    Ok(Boot {
        ok: status.success(),
        log,
    })
}

/// Boots a firmware built *without* `semihosting` (as for a real board), sends `input` on
/// its UART once it announces that it listens, and returns its decoded log once it holds
/// `predictions_wanted` prediction lines (the firmware never exits then: qemu is stopped).
/// Errors after `timeout`.
pub fn run_qemu_serial(
    elf: &Path,
    board: Board,
    input: &[u8],
    predictions_wanted: usize,
    timeout: Duration,
) -> Result<Vec<String>> {
    use std::io::Write;
    let mut cmd = qemu_command(elf, board, None)?;
    cmd.stdin(Stdio::piped());
    let mut child = Qemu(
        cmd.spawn()
            .context("cannot run qemu-system-aarch64 (scripts/install-toolchain.sh installs it)")?,
    );
    let _stderr = drain(
        child
            .0
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no qemu stderr"))?,
    );
    let mut stdin = Some(
        child
            .0
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no qemu stdin"))?,
    );
    let mut stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no qemu stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut writer = None;
    let result = loop {
        while let Ok(chunk) = rx.try_recv() {
            bytes.extend_from_slice(&chunk);
        }
        let log = decode_defmt(elf, &bytes)?;
        if predictions(&log).len() >= predictions_wanted {
            break Ok(log);
        }
        // Send only once the firmware says it listens: bytes that reach the UART before
        // the firmware has set it up are lost (on a board as under qemu).
        if stdin.is_some()
            && log
                .iter()
                .any(|l| l.contains("now send images on the UART"))
        {
            if let Some(mut s) = stdin.take() {
                let data = input.to_vec();
                writer = Some(std::thread::spawn(move || {
                    let _ = s.write_all(&data);
                }));
            }
        }
        if let Some(s) = child.0.try_wait()? {
            break Err(anyhow!(
                "{board}: qemu stopped ({s}) before {predictions_wanted} predictions"
            ));
        }
        if start.elapsed() > timeout {
            break Err(anyhow!(
                "{board}: no {predictions_wanted} predictions within {} s; log: {}",
                timeout.as_secs(),
                log.join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child); // kills qemu: the firmware waits for images forever
    if let Some(w) = writer {
        let _ = w.join();
    }
    result
}

/// Decodes a stream of defmt frames (rzCOBS, as the firmware's logger sends them) with
/// the table in `elf`: one `LEVEL message` line per frame.
pub fn decode_defmt(elf: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let elf_bytes =
        std::fs::read(elf).with_context(|| format!("{}: cannot read", elf.display()))?;
    let table = defmt_decoder::Table::parse(&elf_bytes)
        .with_context(|| format!("{}: cannot read its defmt table", elf.display()))?
        .ok_or_else(|| anyhow!("{}: no defmt data in the ELF", elf.display()))?;
    let mut decoder = table.new_stream_decoder();
    decoder.received(bytes);
    let mut lines = Vec::new();
    loop {
        match decoder.decode() {
            Ok(frame) => {
                let level = frame.level().map_or("LOG", |l| l.as_str());
                lines.push(format!(
                    "{} {}",
                    level.to_uppercase(),
                    frame.display_message()
                ));
            }
            Err(defmt_decoder::DecodeError::UnexpectedEof) => break,
            Err(defmt_decoder::DecodeError::Malformed) => {
                if !table.encoding().can_recover() {
                    bail!("malformed defmt frame in the firmware's output");
                }
            }
        }
    }
    Ok(lines)
}

/// The `prediction image=I class=C` lines of a firmware log, as (image, class).
pub fn predictions(log: &[String]) -> Vec<(usize, u16)> {
    log.iter()
        .filter_map(|l| {
            let rest = l.split_once("prediction image=")?.1;
            let (i, rest) = rest.split_once(' ')?;
            let c = rest.strip_prefix("class=")?.split(' ').next()?;
            Some((i.parse().ok()?, c.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_build_is_reported_in_one_line() {
        let log = "   Compiling convmixer-fw v0.1.0\nerror: failed to run custom build command for `convmixer-fw v0.1.0`\n\nCaused by:\n  process didn't exit successfully\n  --- stderr\n\n  thread 'main' panicked at build.rs:97:9:\n  CMX_MODEL /m.cmx: the blob (2 bytes) does not fit\n  note: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            build_failure(log).as_deref(),
            Some("CMX_MODEL /m.cmx: the blob (2 bytes) does not fit")
        );
        assert_eq!(
            build_failure("error: linking failed\n").as_deref(),
            Some("error: linking failed")
        );
        assert_eq!(build_failure("all fine\n"), None);
    }

    #[test]
    fn predictions_are_parsed_from_log_lines() {
        let log = [
            "INFO convmixer-fw 0.1.0 on qemu virt, EL1".to_string(),
            "INFO prediction image=0 class=7 label=7 score=0.99 ticks=10 us=1".to_string(),
            "INFO prediction image=12 class=3 label=3 score=0.5 ticks=9 us=1".to_string(),
        ];
        assert_eq!(predictions(&log), vec![(0, 7), (12, 3)]);
    }

    #[test]
    fn boards_parse_and_reject_unknown_names() {
        assert_eq!(Board::parse("pi4").unwrap(), Board::Pi4);
        let e = Board::parse("pi5").unwrap_err().to_string();
        assert_eq!(e, "--board pi5: expected virt, pi3 or pi4");
    }
}
