//! The quantiser's modules import one another without cycles, and each file stays small
//! enough to hold in one's head (issue 25: the data path reads as a straight line,
//! `onnx → fold → forward/calibrate → quant → blob`, no module over ~800 lines).
//!
//! The graph is read from the sources: module `a` depends on `b` where a non-comment line
//! of `quantize/src/a.rs` or of a file of its sub-modules (`quantize/src/a/**.rs`; test
//! modules included) names `crate::b`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use convmixer_edge_tests::root;

/// Largest file under `quantize/src`, in lines.
const MAX_LINES: usize = 800;

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, top: Option<&str>, out: &mut Vec<(String, PathBuf)>) {
    for e in std::fs::read_dir(dir).expect("quantize/src") {
        let path = e.expect("entry").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let module = top.map_or(stem.clone(), String::from);
        if path.is_dir() {
            sources(&path, Some(&module), out);
        } else if path.extension().and_then(|x| x.to_str()) == Some("rs") {
            out.push((module, path));
        }
    }
}

/// Module → the modules it names, from `quantize/src/**.rs`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(&root().join("quantize/src"), None, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, path) in files {
        let text = std::fs::read_to_string(&path).expect("source");
        let deps = g.entry(name.clone()).or_default();
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
    }
    g
}

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
    // Sub-module files count for their module: `mixer/lower.rs` names `crate::quant`.
    assert!(g["mixer"].contains("quant"), "{:?}", g["mixer"]);
    for m in g.keys() {
        if let Some(c) = cycle(&g, m, &mut Vec::new(), &mut BTreeSet::new()) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}

#[test]
fn quantize_files_stay_under_the_size_limit() {
    let mut files = Vec::new();
    sources(&root().join("quantize/src"), None, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let long: Vec<String> = files
        .iter()
        .filter_map(|(_, p)| {
            let n = std::fs::read_to_string(p).expect("source").lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these files (over {MAX_LINES} lines): {long:?}"
    );
}
