//! Output files are replaced atomically: `host-tools quantize -o FILE` and `host-tools
//! report -o DIR` are killed (SIGKILL) at many moments of their run, and after every kill
//! the output must be exactly the old one or exactly the one a complete run writes.
//!
//! The kills land at delays spread over a whole run, and, to hit the short moment the
//! output is being written, as soon as the writer's temporary file or folder appears.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

fn ex(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/mnist")
        .join(name)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn host-tools")
}

/// The state of an output path: a file's bytes, or a folder's files and their bytes.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Missing,
    File(Vec<u8>),
    Dir(Vec<(String, Vec<u8>)>),
}

fn state(p: &Path) -> State {
    if p.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(p)
            .expect("read dir")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).expect("read"))
            })
            .collect();
        files.sort();
        State::Dir(files)
    } else if p.exists() {
        State::File(std::fs::read(p).expect("read"))
    } else {
        State::Missing
    }
}

/// Does the folder hold a writer's temporary (`.NAME.tmpPID`)?
fn temp_present(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read dir").any(|e| {
        e.expect("entry")
            .file_name()
            .to_string_lossy()
            .contains(".tmp")
    })
}

/// Runs `args` to completion once (the new state), then kills it at `kills` delays spread
/// over twice that run's time and `early` more times as soon as a temporary appears;
/// before each run the output is reset to `old`. Returns (old seen, new seen, kills that
/// landed while a temporary existed).
fn kill_at_random(
    args: &[&str],
    out: &Path,
    reset: &dyn Fn(),
    kills: u32,
    early: u32,
) -> (u32, u32, u32) {
    reset();
    let old = state(out);
    let t0 = Instant::now();
    let status = spawn(args).wait().expect("wait");
    let full = t0.elapsed();
    assert!(status.success(), "a complete run of {args:?} failed");
    let new = state(out);
    assert_ne!(old, new, "the complete run did not change the output");
    let dir = out.parent().expect("parent");
    let (mut olds, mut news, mut in_write) = (0, 0, 0);
    let mut check = |what: String| {
        let now = state(out);
        if now == old {
            olds += 1;
        } else if now == new {
            news += 1;
        } else {
            panic!("{what}: the output is neither the old one nor the new one: {now:?}");
        }
    };
    for i in 0..kills {
        reset();
        let delay = full.mul_f64(2.0 * f64::from(i) / f64::from(kills - 1));
        let mut child = spawn(args);
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        check(format!("killed after {delay:?}"));
    }
    for i in 0..early {
        reset();
        let mut child = spawn(args);
        let t = Instant::now();
        loop {
            if temp_present(dir) {
                let _ = child.kill();
                in_write += 1;
                break;
            }
            if child.try_wait().expect("try_wait").is_some() || t.elapsed() > 3 * full {
                break;
            }
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let _ = child.wait();
        check(format!("kill {i} at the temporary's appearance"));
    }
    (olds, news, in_write)
}

/// Removes what killed writers left: their hidden temporaries (never the output).
fn clear_temps(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[test]
fn quantize_output_is_old_or_new_after_a_kill() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp");
    let out = tmp.path().join("model.cmx");
    let old = std::fs::read(ex("convmixer-mnist-fp32.cmx")).expect("old blob");
    let onnx = ex("convmixer-mnist.torchscript.onnx");
    let calib = ex("calib");
    let args = [
        "quantize",
        onnx.to_str().expect("utf-8"),
        "--calib",
        calib.to_str().expect("utf-8"),
        "-o",
        out.to_str().expect("utf-8"),
    ];
    let reset = || {
        clear_temps(tmp.path());
        std::fs::write(&out, &old).expect("reset");
    };
    let (olds, news, in_write) = kill_at_random(&args, &out, &reset, 16, 12);
    println!("quantize: {olds} old, {news} new, {in_write} kills while the temporary existed");
    assert!(olds > 0 && news > 0, "{olds} old, {news} new");
}

#[test]
fn report_folder_is_old_or_new_after_a_kill() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp");
    let out = tmp.path().join("report");
    let onnx = ex("convmixer-mnist.torchscript.onnx");
    // A small labelled set and calibration set keep one run short.
    let data = tmp.path().join("data");
    let calib = tmp.path().join("calib-set");
    for d in 0..10 {
        std::fs::create_dir_all(data.join(d.to_string())).expect("mkdir");
    }
    std::fs::create_dir_all(&calib).expect("mkdir");
    let mut files: Vec<_> = std::fs::read_dir(ex("calib"))
        .expect("calib")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for (i, f) in files.iter().step_by(10).enumerate() {
        let name = f.file_name().expect("name");
        std::fs::copy(f, calib.join(name)).expect("copy");
        let class = &name.to_string_lossy()[..1];
        std::fs::copy(f, data.join(class).join(format!("{i}.png"))).expect("copy");
    }
    let args = [
        "report",
        onnx.to_str().expect("utf-8"),
        "--calib",
        calib.to_str().expect("utf-8"),
        "--data",
        data.to_str().expect("utf-8"),
        "-o",
        out.to_str().expect("utf-8"),
    ];
    // The old report: a complete earlier run, marked so that it differs from the new one.
    let status = spawn(&args).wait().expect("wait");
    assert!(status.success(), "report failed");
    let index = out.join("index.html");
    let marked = std::fs::read_to_string(&index).expect("index") + "<!-- old -->";
    let old_files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&out)
        .expect("report dir")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let b = if p == index {
                marked.clone().into_bytes()
            } else {
                std::fs::read(&p).expect("read")
            };
            (p.file_name().expect("name").into(), b)
        })
        .collect();
    let reset = || {
        clear_temps(tmp.path());
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).expect("mkdir");
        for (name, b) in &old_files {
            std::fs::write(out.join(name), b).expect("write");
        }
    };
    let (olds, news, in_write) = kill_at_random(&args, &out, &reset, 12, 8);
    println!("report: {olds} old, {news} new, {in_write} kills while the temporary existed");
    assert!(olds > 0 && news > 0, "{olds} old, {news} new");
}
