//! Build script of the bare-metal firmware: the board's memory map for the linker, and the
//! model blob and test images chosen at build time.
//!
//! * `CMX_MODEL`: the model blob to embed (default: the repository's MNIST-digit int8
//!   example). Copied into `OUT_DIR` and embedded with `include_blob!`; the arena is a static
//!   array of `Model::arena_len()` bytes, computed here with the same runtime crate. A blob
//!   the runtime rejects is still embedded (with an empty arena): the firmware then reports
//!   the error over defmt at start-up, which the tests check.
//! * `CMX_IMAGES`: optional file of raw `u8` images (HWC, `input_len` bytes each) to
//!   classify at start-up. Without it the firmware classifies nothing compiled in.
//! * `CMX_CORES`: cores to run on, 1–4 (default 4: every core of a Raspberry Pi). The arena
//!   is `Model::arena_len_for(CMX_CORES)` bytes.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let boards: Vec<&str> = ["virt", "pi3", "pi4"]
        .into_iter()
        .filter(|b| env::var_os(format!("CARGO_FEATURE_{}", b.to_uppercase())).is_some())
        .collect();
    if boards.len() != 1 {
        panic!(
            "choose exactly one board feature (virt, pi3 or pi4); got {:?}",
            boards
        );
    }
    // Load address and size of the image region (code, data — the model blob —, .bss with
    // the arena, stack). virt: RAM at 1 GiB, qemu loads the ELF at 0x4008_0000; the region
    // is all of the 1 GiB `host-tools flash` gives qemu (`-m 1G`), which the initial page
    // table maps as one block. Raspberry Pi: the GPU firmware loads kernel8.img at 0x8_0000;
    // the region stops where the ARM's RAM ends with the default `gpu_mem` (Pi 3: 64 MiB for
    // the GPU, so 0x3C00_0000; Pi 4: 0x3B40_0000). A larger `gpu_mem` shrinks it: keep the
    // default for big models. So a blob of up to about 900 MiB fits every board (timm's
    // convmixer_1536_20 in fp32 is 207 MB).
    let (origin, length): (u64, u64) = match boards[0] {
        "virt" => (0x4008_0000, 0x4000_0000 - 0x8_0000),
        "pi3" => (0x8_0000, 0x3C00_0000 - 0x8_0000),
        _ => (0x8_0000, 0x3B40_0000 - 0x8_0000),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(
        out.join("memory.ld"),
        format!("MEMORY\n{{\n    image : ORIGIN = {origin:#x}, LENGTH = {length:#x}\n}}\n"),
    )
    .expect("write memory.ld");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg=-Tmemory.ld");
    println!("cargo:rustc-link-arg=-Timage.ld");
    println!("cargo:rustc-link-arg=-Tdefmt.x");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    println!("cargo:rerun-if-env-changed=CMX_MODEL");
    println!("cargo:rerun-if-env-changed=CMX_IMAGES");
    println!("cargo:rerun-if-env-changed=CMX_CORES");
    let cores: usize = match env::var("CMX_CORES") {
        Err(_) => 4,
        Ok(s) => match s.parse() {
            Ok(n @ 1..=4) => n,
            _ => panic!("CMX_CORES {s:?}: expected 1, 2, 3 or 4"),
        },
    };
    let model = env::var_os("CMX_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../examples/mnist/convmixer-mnist-int8.cmx"));
    println!("cargo:rerun-if-changed={}", model.display());
    let blob = fs::read(&model)
        .unwrap_or_else(|e| panic!("CMX_MODEL {}: cannot read: {e}", model.display()));
    fs::write(out.join("model.cmx"), &blob).expect("write model.cmx");
    let (arena, input_len) = match convmixer_edge::Model::from_bytes(&blob) {
        Ok(m) => (m.arena_len_for(cores), m.input_len()),
        Err(e) => {
            println!(
                "cargo:warning=CMX_MODEL {}: {e} (embedded anyway: the firmware will report it)",
                model.display()
            );
            (0, 0)
        }
    };
    let images = match env::var_os("CMX_IMAGES") {
        Some(p) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&p).display());
            let b = fs::read(&p).unwrap_or_else(|e| {
                panic!(
                    "CMX_IMAGES {}: cannot read: {e}",
                    PathBuf::from(&p).display()
                )
            });
            if input_len > 0 && b.len() % input_len != 0 {
                panic!(
                    "CMX_IMAGES {}: {} bytes is not a whole number of {input_len}-byte images",
                    PathBuf::from(&p).display(),
                    b.len()
                );
            }
            b
        }
        None => Vec::new(),
    };
    // The blob, the images, the arena and input buffer, the code (under 1 MiB) and the
    // four 16 KiB stacks must fit the region: said here in one line when they cannot, rather than
    // as the linker's "region `image' overflowed by N bytes".
    let buffers = arena as u64 + input_len as u64;
    let need = blob.len() as u64 + images.len() as u64 + buffers + (2 << 20);
    if need > length {
        panic!(
            "CMX_MODEL {}: the blob ({} bytes), the images ({} bytes), the arena and input \
             buffer ({buffers} bytes) and 2 MiB for code and stack do not fit the {} image \
             region ({length} bytes)",
            model.display(),
            blob.len(),
            images.len(),
            boards[0]
        );
    }
    fs::write(out.join("images.bin"), &images).expect("write images.bin");
    fs::write(
        out.join("config.rs"),
        format!(
            "/// Bytes of scratch the embedded model needs on `CORES` cores (`Model::arena_len_for`), 0 if the blob is invalid.\n\
             pub const ARENA_LEN: usize = {arena};\n\
             /// Cores to run on (`CMX_CORES`, 1–4).\n\
             pub const CORES: usize = {cores};\n\
             /// Bytes of one input image (`Model::input_len`), 0 if the blob is invalid.\n\
             pub const INPUT_LEN: usize = {input_len};\n"
        ),
    )
    .expect("write config.rs");
}
