//! The corpus's external-data cases: the shipped MNIST model rewritten by the test to
//! `model.onnx` + `model.onnx.data` (PyTorch's default layout) or to one file per tensor,
//! every initializer and `Constant` value moved out, then broken one way each.

use std::path::{Path, PathBuf};

use convmixer_edge_tests::onnx_edit::{
    external_entry, graph, mnist_proto, read_proto, write_external, Layout,
};
use prost::Message;
use tract_onnx::pb;

use super::Ctx;

/// `$T/NAME/model.onnx` and its data in `layout`.
fn external(cx: &Ctx, name: &str, layout: Layout) -> PathBuf {
    write_external(&mnist_proto(), &cx.path(name), "model.onnx", layout).0
}

/// The model file `p` rewritten after `f` edits it.
fn edit(p: &Path, f: impl FnOnce(&mut pb::ModelProto)) {
    let mut m = read_proto(p);
    f(&mut m);
    std::fs::write(p, m.encode_to_vec()).expect("write model");
}

/// Sets external-data entry `key` of tensor `tensor` to `value`.
fn set(p: &Path, tensor: &str, key: &str, value: &str) {
    edit(p, |m| external_entry(m, tensor, key).value = value.into());
}

fn data_file(p: &Path) -> PathBuf {
    p.with_file_name("model.onnx.data")
}

pub(crate) fn cases(cx: &mut Ctx) {
    let p = external(cx, "ext-missing", Layout::OneFile);
    std::fs::remove_file(data_file(&p)).expect("rm");
    cx.onnx_path(
        "external data: the .onnx.data file is missing",
        &p,
        "$T/ext-missing/model.onnx: tensor '0.weight': external data file 'model.onnx.data' cannot be read: No such file or directory (os error 2)",
    );

    let p = external(cx, "ext-short", Layout::OneFile);
    let bytes = std::fs::read(data_file(&p)).expect("read");
    let last = read_proto(&p)
        .graph
        .expect("graph")
        .node
        .iter()
        .rev()
        .flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()))
        .next()
        .and_then(|t| t.external_data.iter().find(|e| e.key == "offset"))
        .map(|e| e.value.parse::<usize>().expect("offset"))
        .expect("last tensor");
    std::fs::write(data_file(&p), &bytes[..last + 2]).expect("write");
    cx.onnx_path(
        "external data: the data file cut short (in the last tensor)",
        &p,
        &format!("$T/ext-short/model.onnx: the 'value' tensor of node '/6/6.2/Constant_2': external data at offset {last}, length 4, lies past the end of 'model.onnx.data' ({} bytes)", last + 2),
    );

    let p = external(cx, "ext-offset", Layout::OneFile);
    set(&p, "0.weight", "offset", "1000000000");
    cx.onnx_path(
        "external data: offset past the end of the file",
        &p,
        &format!("$T/ext-offset/model.onnx: tensor '0.weight': external data offset 1000000000 lies past the end of 'model.onnx.data' ({} bytes)", bytes.len()),
    );

    let p = external(cx, "ext-overflow", Layout::OneFile);
    set(&p, "0.weight", "length", &u64::MAX.to_string());
    set(&p, "0.weight", "offset", "64");
    cx.onnx_path(
        "external data: offset + length overflows 64 bits",
        &p,
        &format!("$T/ext-overflow/model.onnx: tensor '0.weight': external data at offset 64, length 18446744073709551615, lies past the end of 'model.onnx.data' ({} bytes)", bytes.len()),
    );

    let p = external(cx, "ext-length", Layout::OneFile);
    set(&p, "0.weight", "length", "764");
    cx.onnx_path(
        "external data: a length that does not match the tensor's shape",
        &p,
        "$T/ext-length/model.onnx: tensor '0.weight' has shape [48, 1, 2, 2] of FLOAT (768 bytes) but its external data holds 764 bytes",
    );

    let p = external(cx, "ext-nan", Layout::OneFile);
    set(&p, "0.weight", "offset", "12abc");
    cx.onnx_path(
        "external data: a non-numeric offset",
        &p,
        "$T/ext-nan/model.onnx: tensor '0.weight': external data offset '12abc' is not a byte count",
    );

    let p = external(cx, "ext-negative", Layout::OneFile);
    set(&p, "0.weight", "length", "-768");
    cx.onnx_path(
        "external data: a negative length",
        &p,
        "$T/ext-negative/model.onnx: tensor '0.weight': external data length '-768' is not a byte count",
    );

    // A location that exists but is absolute: refused before it is looked at.
    let p = external(cx, "ext-absolute", Layout::OneFile);
    let abs = super::s(&data_file(&p));
    set(&p, "0.weight", "location", &abs);
    cx.onnx_path(
        "external data: an absolute location",
        &p,
        "$T/ext-absolute/model.onnx: tensor '0.weight': external data location '$T/ext-absolute/model.onnx.data' is not a relative path inside the model's folder",
    );

    // `..` out of the model's folder, to a file that exists.
    std::fs::write(cx.path("outside.data"), &bytes).expect("write");
    let p = external(cx, "ext-dotdot", Layout::OneFile);
    set(&p, "0.weight", "location", "../outside.data");
    cx.onnx_path(
        "external data: a location climbing out of the model's folder (..)",
        &p,
        "$T/ext-dotdot/model.onnx: tensor '0.weight': external data location '../outside.data' is not a relative path inside the model's folder",
    );

    let p = external(cx, "ext-symlink", Layout::OneFile);
    std::os::unix::fs::symlink(cx.path("outside.data"), p.with_file_name("link.data"))
        .expect("symlink");
    set(&p, "0.weight", "location", "link.data");
    cx.onnx_path(
        "external data: a symbolic link out of the model's folder",
        &p,
        "$T/ext-symlink/model.onnx: tensor '0.weight': external data location 'link.data' leads outside the model's folder (through a symbolic link)",
    );

    let p = external(cx, "ext-folder", Layout::OneFile);
    std::fs::create_dir(p.with_file_name("sub")).expect("mkdir");
    set(&p, "0.weight", "location", "sub");
    cx.onnx_path(
        "external data: a location that is a folder",
        &p,
        "$T/ext-folder/model.onnx: tensor '0.weight': external data location 'sub' is not a file",
    );

    let p = external(cx, "ext-nolocation", Layout::OneFile);
    edit(&p, |m| {
        let t = graph(m)
            .initializer
            .iter_mut()
            .find(|t| t.name == "0.weight")
            .expect("0.weight");
        t.external_data.retain(|e| e.key != "location");
    });
    cx.onnx_path(
        "external data: a tensor marked external with no location",
        &p,
        "$T/ext-nolocation/model.onnx: tensor '0.weight' is external but names no location",
    );

    // One file per tensor: a Constant node's file missing (t056.bin: the 56 initializers
    // come first), and a tensor's file shorter than its shape.
    let p = external(cx, "ext-pertensor", Layout::PerTensor);
    std::fs::remove_file(p.with_file_name("t056.bin")).expect("rm");
    cx.onnx_path(
        "external data, one file per tensor: a Constant's file is missing",
        &p,
        "$T/ext-pertensor/model.onnx: the 'value' tensor of node '/1/Constant': external data file 't056.bin' cannot be read: No such file or directory (os error 2)",
    );
    let p = external(cx, "ext-pershort", Layout::PerTensor);
    std::fs::write(p.with_file_name("t000.bin"), &bytes[..700]).expect("write");
    cx.onnx_path(
        "external data, one file per tensor: a file shorter than its tensor",
        &p,
        "$T/ext-pershort/model.onnx: tensor '0.weight' has shape [48, 1, 2, 2] of FLOAT (768 bytes) but its external data holds 700 bytes",
    );
}
