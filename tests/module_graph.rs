//! The quantiser's modules import one another without cycles (issue 25: the data path
//! reads as a straight line, `onnx → fold → forward/calibrate → quant → blob`).
//!
//! The graph is read from the sources: module `a` depends on `b` where a non-comment line
//! of `quantize/src/a.rs` (test modules included) names `crate::b`.

use std::collections::{BTreeMap, BTreeSet};

use convmixer_edge_tests::root;

/// Module → the modules it names, from `quantize/src/*.rs`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = root().join("quantize/src");
    let mut g = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("quantize/src") {
        let path = e.expect("entry").path();
        if path.extension().and_then(|x| x.to_str()) != Some("rs") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("source");
        let mut deps = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let m: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !m.is_empty() && m != name {
                    deps.insert(m);
                }
            }
        }
        g.insert(name, deps);
    }
    g
}

/// A cycle through `at`, if any (depth-first, `path` the modules on the way).
fn cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == at) {
        let mut c = path[i..].to_vec();
        c.push(at.to_string());
        return Some(c);
    }
    if !done.insert(at.to_string()) {
        return None;
    }
    path.push(at.to_string());
    for d in g.get(at).into_iter().flatten() {
        if let Some(c) = cycle(g, d, path, done) {
            return Some(c);
        }
    }
    path.pop();
    None
}

#[test]
fn quantize_modules_import_without_cycles() {
    let g = graph();
    // The reader sees the modules it should: the importer, the fold, the lowering.
    for m in ["onnx", "fold", "calibrate", "quant", "forward"] {
        assert!(
            g.contains_key(m),
            "quantize/src/{m}.rs is gone: update this test"
        );
    }
    assert!(g["quant"].contains("calibrate") && g["fold"].contains("onnx"));
    for m in g.keys() {
        if let Some(c) = cycle(&g, m, &mut Vec::new(), &mut BTreeSet::new()) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}
