//! Image data for calibration and evaluation: folders of images (PNG, JPEG, BMP, PNM),
//! ImageFolder trees for labelled sets, and MNIST IDX files.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// Shape an image must have: `(height, width, channels)`.
pub type Shape = (usize, usize, usize);

const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "pgm", "ppm", "pnm"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes one image into HWC `u8`, requiring exactly `shape` (gray = 1 channel, RGB = 3;
/// an alpha channel is dropped).
pub fn load_image(path: &Path, shape: Shape) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // The format comes from the content, not the name. The image crate's errors repeat
    // their cause in their source chain: print one level.
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(anyhow::Error::from)
        .and_then(|r| Ok(r.decode()?))
        .map_err(|e| anyhow!("{}: cannot decode image: {e}", path.display()))?;
    let (h, w, c) = shape;
    let channels = match img.color().channel_count() {
        1 | 2 => 1,
        _ => 3,
    };
    if (img.height() as usize, img.width() as usize, channels) != (h, w, c) {
        bail!(
            "{}: image is {}x{} with {} channel(s), the model expects {h}x{w} with {c}",
            path.display(),
            img.height(),
            img.width(),
            channels
        );
    }
    Ok(if c == 1 {
        img.into_luma8().into_raw()
    } else {
        img.into_rgb8().into_raw()
    })
}

/// Image files directly in `dir` or below it, sorted by path (deterministic).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .with_context(|| format!("{}: cannot read folder", d.display()))?;
        for e in rd {
            let p = e
                .with_context(|| format!("{}: cannot read folder", d.display()))?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Calibration images: every image under `path` (a folder), or the images of an IDX file
/// (`*-ubyte`, MNIST format). Errors if there are none.
pub fn calibration_set(path: &Path, shape: Shape) -> Result<Vec<Vec<u8>>> {
    if path.is_file() {
        return read_idx_images(path, shape);
    }
    let files = image_files(path)?;
    if files.is_empty() {
        bail!(
            "{}: no images found (expected .png/.jpg/.bmp/.pnm files or an IDX file)",
            path.display()
        );
    }
    files.iter().map(|f| load_image(f, shape)).collect()
}

/// A labelled set as `(path, class index)`: an ImageFolder tree whose sub-folders are named
/// by class index (`0`, `1`, …) or by label (matched against `labels`).
pub fn image_folder(
    dir: &Path,
    labels: &[String],
    classes: usize,
) -> Result<Vec<(PathBuf, usize)>> {
    let rd =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot read folder", dir.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e
            .with_context(|| format!("{}: cannot read folder", dir.display()))?
            .path();
        if !p.is_dir() {
            continue;
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let class = match labels.iter().position(|l| *l == name) {
            Some(i) => i,
            None => match name.parse::<usize>() {
                Ok(i) if i < classes => i,
                _ => bail!(
                    "{}: folder name '{name}' is neither a class index below {classes} nor a label",
                    p.display()
                ),
            },
        };
        for f in image_files(&p)? {
            out.push((f, class));
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no labelled images (expected one sub-folder per class holding images)",
            dir.display()
        );
    }
    out.sort();
    Ok(out)
}

/// Images of an IDX3 `u8` file (MNIST format, big-endian header).
pub fn read_idx_images(path: &Path, shape: Shape) -> Result<Vec<Vec<u8>>> {
    let b = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if b.len() < 16 || b[0..4] != [0, 0, 8, 3] {
        bail!("{}: not an IDX3 u8 image file", path.display());
    }
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let (n, h, w) = (be(4), be(8), be(12));
    if (h, w, 1) != shape {
        bail!(
            "{}: IDX images are {h}x{w}x1, the model expects {}x{}x{}",
            path.display(),
            shape.0,
            shape.1,
            shape.2
        );
    }
    if b.len() != 16 + n * h * w {
        bail!(
            "{}: IDX file is truncated ({} bytes for {n} images)",
            path.display(),
            b.len()
        );
    }
    Ok(b[16..].chunks_exact(h * w).map(|c| c.to_vec()).collect())
}

/// Labels of an IDX1 `u8` file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let b = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if b.len() < 8 || b[0..4] != [0, 0, 8, 1] {
        bail!("{}: not an IDX1 u8 label file", path.display());
    }
    let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if b.len() != 8 + n {
        bail!("{}: IDX label file is truncated", path.display());
    }
    Ok(b[8..].to_vec())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over the target, then the folder synced. A crash leaves the old file or the new
/// one, never half of one (`host-tools/tests/atomic.rs` kills writers to check it); a
/// process killed mid-write may leave its hidden `.NAME.tmpPID` file behind, never `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
        // The rename itself reaches the disk when the folder is synced (a power cut right
        // after a return could otherwise still show the old file). Not every platform can
        // open a folder for syncing: best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
