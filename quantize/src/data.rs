//! Image data for calibration, evaluation and training: folders of images (PNG, JPEG, BMP,
//! PNM), ImageFolder trees for labelled sets, MNIST IDX files and CIFAR-10 binary batches.

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
    let img = decode(path)?;
    let (h, w, c) = shape;
    let (ih, iw, channels) = shape_of(&img);
    if (ih, iw, channels) != (h, w, c) {
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

/// The paths in folder `dir` (unsorted).
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let cannot = || format!("{}: cannot read folder", dir.display());
    std::fs::read_dir(dir)
        .with_context(cannot)?
        .map(|e| Ok(e.with_context(cannot)?.path()))
        .collect()
}

/// Decodes an image file; the format comes from the content, not the name.
fn decode(path: &Path) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // The image crate's errors repeat their cause in their source chain: print one level.
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(anyhow::Error::from)
        .and_then(|r| Ok(r.decode()?))
        .map_err(|e| anyhow!("{}: cannot decode image: {e}", path.display()))
}

/// Image files directly in `dir` or below it, sorted by path (deterministic).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in entries(&d)? {
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
    // Decoded in parallel ([`crate::par`]); the first failure in file order is the error.
    crate::par::map(&files, |f| load_image(f, shape))
        .into_iter()
        .collect()
}

/// A labelled set as `(path, class index)`: an ImageFolder tree whose sub-folders are named
/// by class index (`0`, `1`, …) or by label (matched against `labels`).
pub fn image_folder(
    dir: &Path,
    labels: &[String],
    classes: usize,
) -> Result<Vec<(PathBuf, usize)>> {
    let mut out = Vec::new();
    for p in entries(dir)? {
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
    let (h, w) = idx_dims(&b, path)?;
    if (h, w, 1) != shape {
        bail!(
            "{}: IDX images are {h}x{w}x1, the model expects {}x{}x{}",
            path.display(),
            shape.0,
            shape.1,
            shape.2
        );
    }
    Ok(idx_pixels(&b, path)?
        .chunks_exact(h * w)
        .map(|c| c.to_vec())
        .collect())
}

/// `(height, width)` of an IDX3 `u8` image file's bytes (its magic checked).
fn idx_dims(b: &[u8], path: &Path) -> Result<(usize, usize)> {
    if b.len() < 16 || b[0..4] != [0, 0, 8, 3] {
        bail!("{}: not an IDX3 u8 image file", path.display());
    }
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let (h, w) = (be(8), be(12));
    if h == 0 || w == 0 {
        bail!(
            "{}: IDX images are {h}x{w} (a zero dimension)",
            path.display()
        );
    }
    Ok((h, w))
}

/// The pixels of an IDX3 file's bytes (after [`idx_dims`]): exactly `n · h · w` of them.
fn idx_pixels<'a>(b: &'a [u8], path: &Path) -> Result<&'a [u8]> {
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let n = be(4);
    if b.len() != 16 + n * be(8) * be(12) {
        bail!(
            "{}: IDX file is truncated ({} bytes for {n} images)",
            path.display(),
            b.len()
        );
    }
    Ok(&b[16..])
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

/// A labelled image set in memory (for training): `n` HWC `u8` images of one shape, one
/// class index each, and the class names (index → name).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledSet {
    /// `(height, width, channels)` of every image.
    pub shape: Shape,
    /// The images, concatenated: `n · h · w · c` bytes.
    pub pixels: Vec<u8>,
    /// Class index per image.
    pub labels: Vec<usize>,
    /// Class names; `labels` are below `classes.len()`.
    pub classes: Vec<String>,
}

impl LabelledSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Image `i` (HWC bytes).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.0 * self.shape.1 * self.shape.2;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// CIFAR-10 binary record: 1 label byte, then 32×32 red, green and blue planes.
const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Reads a labelled set, recognising the format from `path`:
///
/// - an IDX3 image file (MNIST format; magic `00 00 08 03`): the labels are the IDX1 file
///   named like it with `images`→`labels` and `idx3`→`idx1` (`train-images-idx3-ubyte` →
///   `train-labels-idx1-ubyte`); classes `0`..`9`, or up to the largest label;
/// - a CIFAR-10 binary batch (`*.bin`, records of 3073 bytes), or a folder holding
///   `data_batch_*.bin` (all of them, in order); class names from `batches.meta.txt`
///   beside them when present;
/// - otherwise an ImageFolder tree: one sub-folder per class. Folder names that are all
///   numbers are class indices; otherwise classes are the sorted folder names (as
///   torchvision's `ImageFolder`). Every image must have the shape of the first.
///
/// `classes`, when given (the training set's, for a validation set), fixes the class names
/// of an ImageFolder tree, and every folder must be one of them.
pub fn labelled_set(path: &Path, classes: Option<&[String]>) -> Result<LabelledSet> {
    let set = if path.is_dir() {
        let batches = cifar_batches(path)?;
        if batches.is_empty() {
            labelled_folder(path, classes)?
        } else {
            read_cifar(&batches)?
        }
    } else {
        let head = read_head(path)?;
        if head == [0, 0, 8, 3] {
            read_idx_set(path)?
        } else if path.extension().is_some_and(|e| e == "bin") {
            read_cifar(&[path.to_path_buf()])?
        } else {
            bail!(
                "{}: not a labelled set (expected an ImageFolder tree, an IDX3 image file or a CIFAR-10 .bin batch)",
                path.display()
            );
        }
    };
    if let Some(names) = classes {
        if let Some(&l) = set.labels.iter().find(|&&l| l >= names.len()) {
            bail!(
                "{}: label {l} is not below the training set's {} classes",
                path.display(),
                names.len()
            );
        }
    }
    Ok(set)
}

fn read_head(path: &Path) -> Result<[u8; 4]> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(anyhow!("{}: cannot read: {e}", path.display())),
        }
    }
    Ok(head)
}

fn read_idx_set(path: &Path) -> Result<LabelledSet> {
    // One read of the file: the header, then the pixels as they lie.
    let b = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (h, w) = idx_dims(&b, path)?;
    let pixels = idx_pixels(&b, path)?;
    let n = pixels.len() / (h * w);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let lname = name.replace("images", "labels").replace("idx3", "idx1");
    if lname == name {
        bail!(
            "{}: cannot name its labels file (the name should contain 'images' and 'idx3')",
            path.display()
        );
    }
    let lpath = path.with_file_name(&lname);
    let labels = read_idx_labels(&lpath)?;
    if labels.len() != n {
        bail!(
            "{}: {} labels for {} images in {}",
            lpath.display(),
            labels.len(),
            n,
            path.display()
        );
    }
    if n == 0 {
        bail!("{}: no images", path.display());
    }
    let top = labels.iter().copied().max().unwrap_or(0) as usize;
    Ok(LabelledSet {
        shape: (h, w, 1),
        pixels: pixels.to_vec(),
        labels: labels.iter().map(|&l| usize::from(l)).collect(),
        classes: (0..(top + 1).max(10)).map(|i| i.to_string()).collect(),
    })
}

fn cifar_batches(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in entries(dir)? {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_file() && name.starts_with("data_batch_") && name.ends_with(".bin") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn read_cifar(batches: &[PathBuf]) -> Result<LabelledSet> {
    let (hw, c) = (32 * 32, 3);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for p in batches {
        let b = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
        if b.is_empty() || b.len() % CIFAR_RECORD != 0 {
            bail!(
                "{}: {} bytes is not a whole number of CIFAR-10 records ({CIFAR_RECORD} bytes each)",
                p.display(),
                b.len()
            );
        }
        for r in b.chunks_exact(CIFAR_RECORD) {
            if r[0] > 9 {
                bail!("{}: CIFAR-10 label {} is not below 10", p.display(), r[0]);
            }
            labels.push(usize::from(r[0]));
            // planes (CHW) → HWC
            for i in 0..hw {
                for ch in 0..c {
                    pixels.push(r[1 + ch * hw + i]);
                }
            }
        }
    }
    let meta = batches
        .first()
        .map(|p| p.with_file_name("batches.meta.txt"))
        .and_then(|m| std::fs::read_to_string(m).ok());
    let names: Vec<String> = meta
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .filter(|n: &Vec<String>| n.len() == 10)
        .unwrap_or_else(|| (0..10).map(|i| i.to_string()).collect());
    Ok(LabelledSet {
        shape: (32, 32, 3),
        pixels,
        labels,
        classes: names,
    })
}

fn labelled_folder(dir: &Path, classes: Option<&[String]>) -> Result<LabelledSet> {
    let mut folders = Vec::new();
    for p in entries(dir)? {
        if p.is_dir() {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            folders.push((name, p));
        }
    }
    folders.sort();
    let names: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None if !folders.is_empty() && folders.iter().all(|(n, _)| n.parse::<usize>().is_ok()) => {
            let top = folders
                .iter()
                .filter_map(|(n, _)| n.parse::<usize>().ok())
                .max()
                .unwrap_or(0);
            (0..=top).map(|i| i.to_string()).collect()
        }
        None => folders.iter().map(|(n, _)| n.clone()).collect(),
    };
    let mut files = Vec::new();
    for (name, p) in &folders {
        let class = names
            .iter()
            .position(|c| c == name)
            .or_else(|| name.parse::<usize>().ok().filter(|&i| i < names.len()))
            .ok_or_else(|| {
                anyhow!(
                    "{}: folder '{name}' is not one of the training set's classes",
                    p.display()
                )
            })?;
        for f in image_files(p)? {
            files.push((f, class));
        }
    }
    let Some((first, _)) = files.first() else {
        bail!(
            "{}: no labelled images (expected one sub-folder per class holding images)",
            dir.display()
        );
    };
    let shape = image_shape(first)?;
    let mut pixels = Vec::with_capacity(files.len() * shape.0 * shape.1 * shape.2);
    let mut labels = Vec::with_capacity(files.len());
    for (f, class) in &files {
        pixels.extend(load_image(f, shape)?);
        labels.push(*class);
    }
    Ok(LabelledSet {
        shape,
        pixels,
        labels,
        classes: names,
    })
}

/// `(height, width, channels)` of an image file (gray → 1 channel, colour → 3).
pub fn image_shape(path: &Path) -> Result<Shape> {
    Ok(shape_of(&decode(path)?))
}

fn shape_of(img: &image::DynamicImage) -> Shape {
    let c = match img.color().channel_count() {
        1 | 2 => 1,
        _ => 3,
    };
    (img.height() as usize, img.width() as usize, c)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over the target, then the folder synced. A crash leaves the old file or the new
/// one, never half of one (`host-tools/tests/atomic.rs` kills writers to check it); a
/// process killed mid-write may leave its hidden `.NAME.tmpPID` file behind, never `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, |write| write())
}

/// [`write_atomic`], with `check` run on another thread while the temporary file is
/// written and synced (the blob's own load check beside its write): `path` is replaced only
/// if `check` passes, and its error is the one returned.
pub fn write_checked(
    path: &Path,
    bytes: &[u8],
    check: impl FnOnce() -> Result<()> + Send,
) -> Result<()> {
    replace(path, bytes, |write| {
        let (checked, written) = rayon::join(check, || write());
        checked.and(written)
    })
}

/// The temporary file of [`write_atomic`], written and synced by the function `run` is
/// given (alone or beside a check), then renamed over `path` and the folder synced; the
/// temporary is removed on any error.
fn replace(
    path: &Path,
    bytes: &[u8],
    run: impl FnOnce(&(dyn Fn() -> Result<()> + Sync)) -> Result<()>,
) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    let res = run(&write).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
        // The rename itself reaches the disk when the folder is synced (a power cut right
        // after a return could otherwise still show the old file). Not every platform can
        // open a folder for syncing: best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cmx-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cifar_batches_are_read_as_hwc_with_their_names() {
        let d = tmp("cifar");
        // Two records: label 3, R plane = 10, G = 20, B = 30 except pixel 5 (R 255);
        // label 9, planes 0..
        let mut b = Vec::new();
        for (label, base) in [(3u8, [10u8, 20, 30]), (9, [1, 2, 3])] {
            b.push(label);
            for (ch, v) in base.iter().enumerate() {
                for i in 0..1024 {
                    b.push(if label == 3 && ch == 0 && i == 5 {
                        255
                    } else {
                        *v
                    });
                }
            }
        }
        std::fs::write(d.join("data_batch_1.bin"), &b).unwrap();
        std::fs::write(d.join("data_batch_2.bin"), &b[..CIFAR_RECORD]).unwrap();
        let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
        std::fs::write(d.join("batches.meta.txt"), names).unwrap();
        let s = labelled_set(&d, None).unwrap();
        assert_eq!(s.shape, (32, 32, 3));
        assert_eq!(s.labels, vec![3, 9, 3]);
        assert_eq!(s.classes[3], "cat");
        assert_eq!(&s.image(0)[..6], &[10, 20, 30, 10, 20, 30]);
        assert_eq!(&s.image(0)[15..18], &[255, 20, 30]);
        assert_eq!(&s.image(1)[..3], &[1, 2, 3]);
        // One file on its own; a torn file is refused with its size.
        let one = labelled_set(&d.join("data_batch_2.bin"), None).unwrap();
        assert_eq!(one.labels, vec![3]);
        std::fs::write(d.join("data_batch_3.bin"), &b[..100]).unwrap();
        let e = labelled_set(&d, None).unwrap_err().to_string();
        assert!(
            e.contains("100 bytes is not a whole number of CIFAR-10 records"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn image_folders_name_their_classes() {
        let d = tmp("folder");
        for (class, shade) in [("dog", 200u8), ("cat", 100)] {
            std::fs::create_dir_all(d.join(class)).unwrap();
            image::GrayImage::from_pixel(4, 3, image::Luma([shade]))
                .save(d.join(class).join("a.png"))
                .unwrap();
        }
        let s = labelled_set(&d, None).unwrap();
        // Sorted names, as torchvision's ImageFolder.
        assert_eq!(s.classes, vec!["cat".to_string(), "dog".into()]);
        assert_eq!((s.shape, s.labels.clone()), ((3, 4, 1), vec![0, 1]));
        assert_eq!(s.image(1), &[200; 12]);
        // A validation set must use the training set's names.
        let e = labelled_set(&d, Some(&["cat".to_string(), "cow".into()])).unwrap_err();
        assert!(
            e.to_string()
                .contains("folder 'dog' is not one of the training set's classes"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_check_leaves_the_old_file_and_no_temporary() {
        let d = tmp("checked");
        let out = d.join("model.cmx");
        std::fs::write(&out, b"old").unwrap();
        let e =
            write_checked(&out, b"new", || anyhow::bail!("the blob does not load")).unwrap_err();
        assert_eq!(e.to_string(), "the blob does not load");
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "a temporary was left"
        );
        write_checked(&out, b"new", || Ok(())).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
