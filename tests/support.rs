//! Shared helpers for the end-to-end tests: fixture paths, the fold fixtures' sidecars,
//! running a blob with the runtime, and comparing logits.

use std::path::{Path, PathBuf};

use convmixer_edge::Model;
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `examples/mnist/…`.
pub fn mnist(name: &str) -> PathBuf {
    root().join("examples/mnist").join(name)
}

/// Normalisation the MNIST model was trained with.
pub const MNIST_MEAN: f32 = 0.1307;
/// See [`MNIST_MEAN`].
pub const MNIST_STD: f32 = 0.3081;

/// One BN-folding fixture (`tests/fixtures/fold/NAME.{onnx,json}`).
pub struct FoldFixture {
    /// Fixture name.
    pub name: String,
    /// The ONNX file.
    pub onnx: PathBuf,
    /// `torchscript` or `dynamo`.
    pub exporter: String,
    /// Input channels, height, width.
    pub chw: (usize, usize, usize),
    /// Classes.
    pub classes: usize,
    /// Input images, HWC u8 (converted from the sidecar's NCHW).
    pub images: Vec<Vec<u8>>,
    /// PyTorch's logits per image (input `u8/255`, no normalisation).
    pub torch_logits: Vec<Vec<f32>>,
}

/// Every fold fixture, sorted by name.
pub fn fold_fixtures() -> Vec<FoldFixture> {
    let dir = root().join("tests/fixtures/fold");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|json| {
            let v: Value =
                serde_json::from_slice(&std::fs::read(&json).expect("sidecar")).expect("json");
            let u = |k: &str| {
                v[k].as_u64()
                    .unwrap_or_else(|| panic!("{k} in {}", json.display())) as usize
            };
            let (n, c, h, w) = (2, u("in_chans"), u("H"), u("W"));
            let classes = u("classes");
            let raw: Vec<u8> = v["input_u8"]
                .as_array()
                .expect("input_u8")
                .iter()
                .map(|x| x.as_u64().expect("u8") as u8)
                .collect();
            assert_eq!(raw.len(), n * c * h * w);
            let images = (0..n)
                .map(|b| {
                    let mut hwc = vec![0u8; c * h * w];
                    for ch in 0..c {
                        for i in 0..h * w {
                            hwc[i * c + ch] = raw[((b * c) + ch) * h * w + i];
                        }
                    }
                    hwc
                })
                .collect();
            let flat: Vec<f32> = v["logits"]
                .as_array()
                .expect("logits")
                .iter()
                .map(|x| x.as_f64().expect("f") as f32)
                .collect();
            FoldFixture {
                name: v["name"].as_str().expect("name").to_string(),
                onnx: dir.join(v["file"].as_str().expect("file")),
                exporter: v["exporter"].as_str().expect("exporter").to_string(),
                chw: (c, h, w),
                classes,
                images,
                torch_logits: flat.chunks(classes).map(<[f32]>::to_vec).collect(),
            }
        })
        .collect()
}

/// Logits of `blob` for HWC `pixels`, by the runtime.
pub fn run_blob(blob: &[u8], pixels: &[u8]) -> Vec<f32> {
    let m = Model::from_bytes(blob).expect("blob loads");
    let mut arena = vec![0u8; m.arena_len()];
    let mut out = vec![0f32; usize::from(m.header().classes)];
    m.logits(pixels, &mut arena, &mut out).expect("inference");
    out
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Index of the first maximum.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The MNIST held-out set from the IDX files: `(HWC pixels, label)`.
pub fn mnist_heldout() -> Vec<(Vec<u8>, usize)> {
    let imgs =
        convmixer_quantize::data::read_idx_images(&mnist("heldout-images.idx3-ubyte"), (28, 28, 1))
            .expect("idx images");
    let labels = convmixer_quantize::data::read_idx_labels(&mnist("heldout-labels.idx1-ubyte"))
        .expect("idx labels");
    assert_eq!(imgs.len(), labels.len());
    imgs.into_iter()
        .zip(labels.into_iter().map(usize::from))
        .collect()
}

/// Runs `f` over `items` on all cores, keeping order.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// Byte range of section `kind` of `layer` in `blob`, read from its table of contents
/// (independently of the runtime's reader).
pub fn section_range(
    blob: &[u8],
    kind: convmixer_edge::blob::SectionKind,
    layer: u16,
) -> std::ops::Range<usize> {
    let n = usize::from(u16::from_le_bytes([blob[26], blob[27]]));
    let e = (0..n)
        .map(|i| &blob[64 + 16 * i..64 + 16 * (i + 1)])
        .find(|e| {
            u16::from_le_bytes([e[0], e[1]]) == kind as u16
                && u16::from_le_bytes([e[2], e[3]]) == layer
        })
        .expect("section in the table of contents");
    let off = u32::from_le_bytes([e[4], e[5], e[6], e[7]]) as usize;
    let len = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as usize;
    off..off + len
}

/// Recomputes the header's CRC-32 after a test edited the blob.
pub fn fix_crc(b: &mut [u8]) {
    let mut d = convmixer_edge::blob::CRC.digest();
    d.update(&b[..convmixer_edge::blob::CRC_RANGE.start]);
    d.update(&b[convmixer_edge::blob::CRC_RANGE.end..]);
    let c = d.finalize().to_le_bytes();
    b[convmixer_edge::blob::CRC_RANGE].copy_from_slice(&c);
}

/// `b` with `bytes` written at `at` and the CRC made valid again, so that the reader gets
/// past the CRC to the field checks.
pub fn patched(b: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut c = b.to_vec();
    c[at..at + bytes.len()].copy_from_slice(bytes);
    fix_crc(&mut c);
    c
}

/// Flips every bit of `blob` in turn and asserts the reader's verdict: the CRC is checked
/// before any header field is believed, so a flip anywhere but in the magic (not a blob) or
/// in `blob_len` (made longer: truncated) is a CRC mismatch.
pub fn assert_every_bit_flip_is_caught(blob: &[u8]) {
    use convmixer_edge::Error;
    for bit in 0..blob.len() * 8 {
        let mut c = blob.to_vec();
        let at = bit / 8;
        c[at] ^= 1 << (bit % 8);
        let e = Model::from_bytes(&c).err();
        let ok = match at {
            0..4 => e == Some(Error::BadMagic),
            32..36 => matches!(e, Some(Error::BadCrc | Error::Truncated)),
            _ => e == Some(Error::BadCrc),
        };
        assert!(ok, "flip of bit {bit} (byte {at}) gave {e:?}");
    }
}

/// Runs `mutations` random edits of `blob` (1–4 bytes each, half of them in the first
/// `head` bytes: header and table of contents), each with a valid CRC, through
/// `Model::from_bytes` and, where accepted, `classify` on random and on zero pixels
/// (`input_len` bytes). Returns `(accepted, rejected)`; a panic fails the calling test.
pub fn mutate_and_run(
    blob: &[u8],
    input_len: usize,
    mutations: usize,
    head: u64,
) -> (usize, usize) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..mutations {
        let mut c = blob.to_vec();
        for _ in 0..1 + rand() % 4 {
            let at = if rand() % 2 == 0 {
                (rand() % head) as usize
            } else {
                (rand() as usize) % c.len()
            };
            let at = at.min(c.len() - 1);
            c[at] = rand() as u8;
        }
        fix_crc(&mut c);
        match Model::from_bytes(&c) {
            Ok(m) => {
                let mut arena = vec![0u8; m.arena_len().min(1 << 24)];
                let px: Vec<u8> = (0..m.input_len().min(1 << 20))
                    .map(|_| rand() as u8)
                    .collect();
                let _ = m.classify::<3>(&px, &mut arena);
                let _ = m.classify::<3>(&vec![0; input_len], &mut arena);
                ok += 1;
            }
            Err(_) => err += 1,
        }
    }
    (ok, err)
}

/// Editing ONNX models for the malformed-input and edge-case tests.
pub mod onnx_edit {
    use std::path::{Path, PathBuf};

    use prost::Message;
    use tract_onnx::pb;

    /// The shipped MNIST model (TorchScript export) as a protobuf to edit.
    pub fn mnist_proto() -> pb::ModelProto {
        let b = std::fs::read(super::mnist("convmixer-mnist.torchscript.onnx")).expect("onnx");
        pb::ModelProto::decode(b.as_slice()).expect("decode")
    }

    /// The model's graph.
    pub fn graph(m: &mut pb::ModelProto) -> &mut pb::GraphProto {
        m.graph.as_mut().expect("graph")
    }

    /// Applies `f` to the values of f32 initializer `name` (raw or `float_data`).
    pub fn edit_f32(m: &mut pb::ModelProto, name: &str, f: impl FnOnce(&mut [f32])) {
        let t = graph(m)
            .initializer
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("initializer {name}"));
        if t.raw_data.is_empty() {
            f(&mut t.float_data);
        } else {
            let mut v: Vec<f32> = t
                .raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            f(&mut v);
            t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    }

    /// Sets the graph input's height and width.
    pub fn set_input_hw(m: &mut pb::ModelProto, h: i64, w: i64) {
        let input = &mut graph(m).input[0];
        let Some(pb::type_proto::Value::TensorType(t)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            panic!("input type")
        };
        let dims = &mut t.shape.as_mut().expect("shape").dim;
        for (d, v) in dims[2..].iter_mut().zip([h, w]) {
            d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(v));
        }
    }

    /// How [`write_external`] stores the tensors.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Layout {
        /// One data file `NAME.data` beside the model, every tensor at a 64-byte aligned
        /// `offset` with its `length` (as `torch.onnx.export` writes it).
        OneFile,
        /// One file per tensor (`t000.bin`, …), with neither offset nor length (as
        /// `onnx.save_model(..., all_tensors_to_one_file=False)` writes it).
        PerTensor,
    }

    /// Writes `m` as `dir/name` with every tensor that has `raw_data` — the initializers
    /// and the `Constant` nodes' values — moved to external data laid out as `layout`.
    /// Returns the model's path and how many tensors were moved.
    pub fn write_external(
        m: &pb::ModelProto,
        dir: &Path,
        name: &str,
        layout: Layout,
    ) -> (PathBuf, usize) {
        std::fs::create_dir_all(dir).expect("model folder");
        let mut m = m.clone();
        let data_name = format!("{name}.data");
        let mut data: Vec<u8> = Vec::new();
        let mut moved = 0usize;
        let mut move_out = |t: &mut pb::TensorProto| {
            if t.raw_data.is_empty() {
                return;
            }
            let bytes = std::mem::take(&mut t.raw_data);
            let kv = |k: &str, v: String| pb::StringStringEntryProto {
                key: k.into(),
                value: v,
            };
            t.external_data = match layout {
                Layout::OneFile => {
                    data.resize(data.len().next_multiple_of(64), 0);
                    let offset = data.len();
                    data.extend_from_slice(&bytes);
                    vec![
                        kv("location", data_name.clone()),
                        kv("offset", offset.to_string()),
                        kv("length", bytes.len().to_string()),
                    ]
                }
                Layout::PerTensor => {
                    let file = format!("t{moved:03}.bin");
                    std::fs::write(dir.join(&file), &bytes).expect("tensor file");
                    vec![kv("location", file)]
                }
            };
            t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
            moved += 1;
        };
        let g = graph(&mut m);
        g.initializer.iter_mut().for_each(&mut move_out);
        for n in &mut g.node {
            for a in &mut n.attribute {
                if let Some(t) = a.t.as_mut() {
                    move_out(t);
                }
            }
        }
        if layout == Layout::OneFile {
            std::fs::write(dir.join(&data_name), &data).expect("data file");
        }
        let path = dir.join(name);
        std::fs::write(&path, m.encode_to_vec()).expect("model file");
        (path, moved)
    }

    /// The external-data entry `key` of the tensor named `tensor` (initializer or Constant
    /// value), to break it.
    pub fn external_entry<'m>(
        m: &'m mut pb::ModelProto,
        tensor: &str,
        key: &str,
    ) -> &'m mut pb::StringStringEntryProto {
        let g = graph(m);
        let t = g
            .initializer
            .iter_mut()
            .chain(
                g.node
                    .iter_mut()
                    .flat_map(|n| n.attribute.iter_mut().filter_map(|a| a.t.as_mut())),
            )
            .find(|t| t.name == tensor)
            .unwrap_or_else(|| panic!("tensor {tensor}"));
        t.external_data
            .iter_mut()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("{tensor}: no external {key}"))
    }

    /// The model at `path` (as written, external data unread).
    pub fn read_proto(path: &Path) -> pb::ModelProto {
        pb::ModelProto::decode(std::fs::read(path).expect("read model").as_slice()).expect("decode")
    }

    /// The MNIST model with block 0's pointwise channel 0 given weights 10^9 times smaller
    /// than its bias (1.0): in int8 accumulator units the bias is past 2^31, so int8
    /// quantisation must refuse it (fp16 takes it).
    pub fn mnist_with_overflowing_bias() -> pb::ModelProto {
        let mut m = mnist_proto();
        edit_f32(&mut m, "3.1.weight", |w| {
            w[..48].iter_mut().for_each(|x| *x *= 1e-9)
        });
        edit_f32(&mut m, "3.1.bias", |b| b[0] = 1.0);
        m
    }
}

/// Top-1 (%) of tract's fp32 run of the 1×28×28 ONNX model at `path` on the MNIST digits
/// `set` (with the MNIST normalisation): the independent reference the accuracy tests
/// compare with.
pub fn tract_mnist_top1(path: &Path, set: &[(Vec<u8>, usize)]) -> f64 {
    let tract = convmixer_quantize::reference::TractModel::load(path, 1, 28, 28).expect("tract");
    percent(&par_map(set, |(px, y)| {
        argmax(
            &tract
                .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                .expect("tract"),
        ) == *y
    }))
}

/// Top-1 (%) of `blob` run by the runtime on the labelled images `set`.
pub fn blob_top1(blob: &[u8], set: &[(Vec<u8>, usize)]) -> f64 {
    percent(&par_map(set, |(px, y)| argmax(&run_blob(blob, px)) == *y))
}

/// The share of `true` in `hits`, in percent.
pub fn percent(hits: &[bool]) -> f64 {
    100.0 * hits.iter().filter(|&&h| h).count() as f64 / hits.len().max(1) as f64
}

/// The bias move that bias correction should make on one output, in accumulator steps:
/// `w` the output's weights in units of its int8 input's steps (quantised symmetrically by
/// the quantiser, `step = max|w|/127`), `s_in[t]` input t's scale (what `w` was multiplied
/// by), `mean[t]` input t's mean: `−Σ_t (ŵ_t − w_t)/s_in[t]·mean[t] / step`. An independent
/// restatement of the quantiser's formula for the tests.
pub fn expected_bias_move(w: &[f64], s_in: impl Fn(usize) -> f64, mean: &[f64]) -> f64 {
    let step = w.iter().fold(0f64, |m, v| m.max(v.abs())) / 127.0;
    let mean_err: f64 = w
        .iter()
        .enumerate()
        .map(|(t, &v)| ((v / step).round() * step - v) / s_in(t) * mean[t])
        .sum();
    -mean_err / step
}

/// The i32 at element `o` of a BIAS section's bytes.
pub fn bias_at(section: &[u8], o: usize) -> i32 {
    i32::from_le_bytes(section[4 * o..4 * o + 4].try_into().expect("4 bytes"))
}
