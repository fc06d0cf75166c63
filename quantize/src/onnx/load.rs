//! Reading an ONNX model: the protobuf, and — for a model read from its path — the tensors
//! it keeps in *external data* files beside it.
//!
//! PyTorch's default export, `torch.onnx.export(model, (x,), "model.onnx")` (the dynamo
//! exporter), writes the weights to `model.onnx.data` and keeps in `model.onnx` only, for
//! each tensor, `data_location = EXTERNAL` and the key/values `location` (a path relative to
//! the model's folder), `offset` (default 0), `length` (default: the rest of the file) and
//! `checksum` (not checked here). `onnx.save_model(..., save_as_external_data=True,
//! all_tensors_to_one_file=False)` writes one file per tensor the same way. [`load`] reads
//! every such tensor into its `raw_data` and marks it inline, wherever a tensor can be: the
//! graph's initializers, sparse initializers, and the attributes of its nodes (`Constant`'s
//! `value`), subgraphs and functions included. The rest of the crate then sees one inline
//! model, whichever way it was saved.
//!
//! Each data file is opened once and read tensor by tensor in the order of their offsets,
//! after every tensor's range has been checked against the file's length (checked
//! arithmetic): nothing is read outside a file, and nothing more than the tensors hold is
//! allocated. A location must be a relative path that stays inside the model's folder, also
//! once symbolic links are resolved.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::pb::{self, tensor_proto::DataLocation, tensor_proto::DataType, TensorProto};

/// The model in the ONNX file `path`, with its external data (if any) read in: every
/// tensor's bytes are in `raw_data` and none is marked external. Every error names the file
/// and, for external data, the tensor and the data file.
pub fn load(path: &Path) -> Result<pb::ModelProto> {
    let name = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read"))?;
    if bytes.is_empty() {
        bail!("{name}: empty file (not an ONNX model)");
    }
    let mut proto = parse_model(&bytes).with_context(|| name.to_string())?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    read_external(&mut proto, folder).with_context(|| name.to_string())?;
    Ok(proto)
}

/// The protobuf of ONNX bytes (external data, if the model has any, stays unread). Decoded
/// straight from `bytes` with prost (tract's reader copies them first and builds its whole
/// op registry on every call).
pub fn parse_model(bytes: &[u8]) -> Result<pb::ModelProto> {
    <pb::ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| anyhow!("not a valid ONNX protobuf ({e})"))
}

/// `Some(location)` when `t` keeps its data in an external file (`location` as written, or
/// empty when the tensor names none).
pub(crate) fn external_location(t: &TensorProto) -> Option<&str> {
    (t.data_location == Some(DataLocation::External as i32))
        .then(|| value(t, "location").unwrap_or(""))
}

fn value<'t>(t: &'t TensorProto, key: &str) -> Option<&'t str> {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

/// One external tensor, checked and ready to read: `len` bytes at `offset`.
struct Read1 {
    tensor: usize,
    offset: u64,
    len: usize,
}

/// An external data file: its canonical path, its name as written, its length, and what is
/// read from it.
struct DataFile {
    path: PathBuf,
    location: String,
    size: u64,
    reads: Vec<Read1>,
}

/// Reads every external tensor of `proto` from its file under `folder` (the model's).
fn read_external(proto: &mut pb::ModelProto, folder: &Path) -> Result<()> {
    let mut tensors = Vec::new();
    model_tensors(proto, &mut tensors);
    tensors.retain(|(_, t)| t.data_location == Some(DataLocation::External as i32));
    if tensors.is_empty() {
        return Ok(());
    }
    let root = folder
        .canonicalize()
        .with_context(|| format!("the model's folder {} cannot be read", folder.display()))?;
    // Pass 1, in the model's order: every tensor's file and range, checked before anything
    // is read.
    let mut files: Vec<DataFile> = Vec::new();
    let mut by_location: HashMap<String, usize> = HashMap::new();
    for (i, (label, t)) in tensors.iter().enumerate() {
        let location = value(t, "location")
            .ok_or_else(|| anyhow!("{label} is external but names no location"))?;
        let f = match by_location.get(location) {
            Some(&f) => f,
            None => {
                let path = resolve(&root, location).with_context(|| label.clone())?;
                // Two spellings of one file ("w.bin", "./w.bin") share it.
                let f = match files.iter().position(|d| d.path == path) {
                    Some(f) => f,
                    None => {
                        let size = std::fs::metadata(&path)
                            .with_context(|| {
                                format!("{label}: external data file '{location}' cannot be read")
                            })?
                            .len();
                        files.push(DataFile {
                            path,
                            location: location.to_string(),
                            size,
                            reads: Vec::new(),
                        });
                        files.len() - 1
                    }
                };
                by_location.insert(location.to_string(), f);
                f
            }
        };
        let file = &mut files[f];
        let (offset, len) = range(t, label, location, file.size)?;
        let need = byte_len(t, label)?;
        if len != need {
            bail!(
                "{label} has shape {:?} of {} ({need} bytes) but its external data holds {len} bytes",
                t.dims,
                type_name(t.data_type)
            );
        }
        let len =
            usize::try_from(len).map_err(|_| anyhow!("{label} is too large for this machine"))?;
        file.reads.push(Read1 {
            tensor: i,
            offset,
            len,
        });
    }
    // Pass 2: each file opened once and read in the order of the offsets.
    for file in &mut files {
        file.reads.sort_by_key(|r| r.offset);
        let location = &file.location;
        let mut fd = File::open(&file.path)
            .with_context(|| format!("external data file '{location}' cannot be read"))?;
        let mut at = 0u64;
        for r in &file.reads {
            let (label, t) = &mut tensors[r.tensor];
            let cannot = || format!("{label}: external data file '{location}' cannot be read");
            if r.offset != at {
                fd.seek(SeekFrom::Start(r.offset)).with_context(cannot)?;
            }
            let mut raw = vec![0u8; r.len];
            fd.read_exact(&mut raw).with_context(cannot)?;
            t.raw_data = raw;
            t.data_location = None;
            t.external_data.clear();
            at = r.offset + r.len as u64;
        }
    }
    Ok(())
}

/// The canonical path of `location` under the canonical folder `root`, refused when it is
/// not a relative path or leads outside `root` (`..`, or a symbolic link).
fn resolve(root: &Path, location: &str) -> Result<PathBuf> {
    let rel = Path::new(location);
    let plain = rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain || !rel.components().any(|c| matches!(c, Component::Normal(_))) {
        bail!(
            "external data location '{location}' is not a relative path inside the model's folder"
        );
    }
    let path = root
        .join(rel)
        .canonicalize()
        .with_context(|| format!("external data file '{location}' cannot be read"))?;
    if !path.starts_with(root) {
        bail!("external data location '{location}' leads outside the model's folder (through a symbolic link)");
    }
    if !path.is_file() {
        bail!("external data location '{location}' is not a file");
    }
    Ok(path)
}

/// `(offset, length)` of `t`'s data in a file of `size` bytes named `location`.
fn range(t: &TensorProto, label: &str, location: &str, size: u64) -> Result<(u64, u64)> {
    let number = |key: &str| -> Result<Option<u64>> {
        value(t, key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| anyhow!("{label}: external data {key} '{v}' is not a byte count"))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?;
    let past = |what: String| {
        anyhow!("{label}: external data {what} lies past the end of '{location}' ({size} bytes)")
    };
    if offset > size {
        return Err(past(format!("offset {offset}")));
    }
    match length {
        None => Ok((offset, size - offset)),
        Some(l) if offset.checked_add(l).is_some_and(|end| end <= size) => Ok((offset, l)),
        Some(l) => Err(past(format!("at offset {offset}, length {l},"))),
    }
}

/// The bytes `t`'s shape and data type take.
fn byte_len(t: &TensorProto, label: &str) -> Result<u64> {
    let mut n = 1u64;
    for &d in &t.dims {
        n = u64::try_from(d)
            .ok()
            .and_then(|d| n.checked_mul(d))
            .ok_or_else(|| anyhow!("{label} has shape {:?}: not a valid size", t.dims))?;
    }
    use DataType as D;
    let bits: u64 = match DataType::try_from(t.data_type) {
        Ok(D::Uint4 | D::Int4 | D::Float4e2m1) => 4,
        Ok(
            D::Uint8
            | D::Int8
            | D::Bool
            | D::Float8e4m3fn
            | D::Float8e4m3fnuz
            | D::Float8e5m2
            | D::Float8e5m2fnuz,
        ) => 8,
        Ok(D::Uint16 | D::Int16 | D::Float16 | D::Bfloat16) => 16,
        Ok(D::Float | D::Int32 | D::Uint32) => 32,
        Ok(D::Double | D::Int64 | D::Uint64 | D::Complex64) => 64,
        Ok(D::Complex128) => 128,
        _ => bail!(
            "{label} has data type {} (cannot be stored as external data)",
            type_name(t.data_type)
        ),
    };
    n.checked_mul(bits)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| anyhow!("{label} has shape {:?}: not a valid size", t.dims))
}

fn type_name(t: i32) -> String {
    DataType::try_from(t).map_or_else(|_| t.to_string(), |d| d.as_str_name().to_string())
}

/// A tensor found in the model, with what error messages call it: `tensor 'NAME'`, or for
/// an unnamed attribute tensor (a `Constant`'s value) `the 'ATTR' tensor of node 'NODE'`.
type Found<'m> = (String, &'m mut TensorProto);

/// Every tensor of the model, wherever one can be.
fn model_tensors<'m>(m: &'m mut pb::ModelProto, out: &mut Vec<Found<'m>>) {
    if let Some(g) = m.graph.as_mut() {
        graph_tensors(g, out);
    }
    for t in &mut m.training_info {
        for g in [t.initialization.as_mut(), t.algorithm.as_mut()]
            .into_iter()
            .flatten()
        {
            graph_tensors(g, out);
        }
    }
    for f in &mut m.functions {
        for n in &mut f.node {
            node_tensors(n, out);
        }
    }
}

fn named(t: &mut TensorProto) -> Found<'_> {
    (format!("tensor '{}'", t.name), t)
}

fn graph_tensors<'m>(g: &'m mut pb::GraphProto, out: &mut Vec<Found<'m>>) {
    out.extend(g.initializer.iter_mut().map(named));
    for s in &mut g.sparse_initializer {
        out.extend(s.values.iter_mut().chain(s.indices.iter_mut()).map(named));
    }
    for n in &mut g.node {
        node_tensors(n, out);
    }
}

fn node_tensors<'m>(n: &'m mut pb::NodeProto, out: &mut Vec<Found<'m>>) {
    let node = if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    };
    for a in &mut n.attribute {
        let attr = a.name.clone();
        let label = |t: &TensorProto| {
            if t.name.is_empty() {
                format!("the '{attr}' tensor of node '{node}'")
            } else {
                format!("tensor '{}'", t.name)
            }
        };
        let sparse = a
            .sparse_tensor
            .iter_mut()
            .chain(a.sparse_tensors.iter_mut())
            .flat_map(|s| s.values.iter_mut().chain(s.indices.iter_mut()));
        for t in a.t.iter_mut().chain(a.tensors.iter_mut()).chain(sparse) {
            out.push((label(t), t));
        }
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            graph_tensors(g, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn external(name: &str, dims: &[i64], data_type: DataType, kv: &[(&str, &str)]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type as i32,
            data_location: Some(DataLocation::External as i32),
            external_data: kv
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Tensors in every place load looks (initializer, a Constant's value, a subgraph's
    /// initializer), sharing one file under two spellings, out of offset order, plus a
    /// file of its own with no offset or length: each gets its bytes.
    #[test]
    fn every_tensor_is_read_wherever_it_is() {
        let dir = std::env::temp_dir().join(format!("cmx-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shared: Vec<u8> = (0u8..32).collect();
        std::fs::write(dir.join("d.bin"), &shared).unwrap();
        std::fs::write(dir.join("c.bin"), 7.5f32.to_le_bytes()).unwrap();
        let sub = pb::GraphProto {
            initializer: vec![external(
                "s",
                &[2],
                DataType::Int32,
                &[("location", "d.bin"), ("offset", "24"), ("length", "8")],
            )],
            ..Default::default()
        };
        let node = |op: &str, attr: pb::AttributeProto| pb::NodeProto {
            op_type: op.into(),
            name: format!("n-{op}"),
            output: vec![format!("{op}_out")],
            attribute: vec![attr],
            ..Default::default()
        };
        let m = pb::ModelProto {
            graph: Some(pb::GraphProto {
                initializer: vec![
                    external(
                        "a",
                        &[2],
                        DataType::Float,
                        &[("location", "d.bin"), ("offset", "8"), ("length", "8")],
                    ),
                    external(
                        "b",
                        &[1],
                        DataType::Int64,
                        &[("location", "./d.bin"), ("offset", "0"), ("length", "8")],
                    ),
                ],
                node: vec![
                    node(
                        "Constant",
                        pb::AttributeProto {
                            name: "value".into(),
                            t: Some(external("", &[], DataType::Float, &[("location", "c.bin")])),
                            ..Default::default()
                        },
                    ),
                    node(
                        "If",
                        pb::AttributeProto {
                            name: "then_branch".into(),
                            g: Some(sub),
                            ..Default::default()
                        },
                    ),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join("m.onnx");
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let got = load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let g = got.graph.unwrap();
        assert_eq!(g.initializer[0].raw_data, &shared[8..16]);
        assert_eq!(g.initializer[1].raw_data, &shared[0..8]);
        let c = g.node[0].attribute[0].t.as_ref().unwrap();
        assert_eq!(c.raw_data, 7.5f32.to_le_bytes());
        let s = &g.node[1].attribute[0].g.as_ref().unwrap().initializer[0];
        assert_eq!(s.raw_data, &shared[24..32]);
        for t in [&g.initializer[0], &g.initializer[1], c, s] {
            assert_eq!(t.data_location, None);
            assert!(t.external_data.is_empty());
        }
    }

    #[test]
    fn sizes_follow_the_data_type() {
        let t = |dt, dims: &[i64]| TensorProto {
            data_type: dt as i32,
            dims: dims.to_vec(),
            ..Default::default()
        };
        assert_eq!(byte_len(&t(DataType::Float16, &[3, 5]), "x").unwrap(), 30);
        assert_eq!(byte_len(&t(DataType::Int4, &[3]), "x").unwrap(), 2);
        assert_eq!(byte_len(&t(DataType::Complex128, &[]), "x").unwrap(), 16);
        let e = byte_len(&t(DataType::Float, &[-1]), "tensor 'x'").unwrap_err();
        assert_eq!(e.to_string(), "tensor 'x' has shape [-1]: not a valid size");
        let e = byte_len(&t(DataType::Float, &[1 << 62, 8]), "tensor 'x'").unwrap_err();
        assert!(e.to_string().ends_with("not a valid size"), "{e}");
        let e = byte_len(&t(DataType::String, &[1]), "tensor 'x'").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor 'x' has data type STRING (cannot be stored as external data)"
        );
    }
}
