//! Fixtures shared by the validation tests: a small clean tree and hostile additions.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Report, MANIFEST_FILENAME, TENSOR_KEY, TENSOR_SUFFIX};
use crate::header::tests::build;

pub(super) fn vector_file(dir: &Path, id: &str, shape: &[u64]) -> Vec<u8> {
    let bytes = build(&[(TENSOR_KEY, "F32", shape)], &[]);
    fs::write(dir.join(format!("{id}{TENSOR_SUFFIX}")), &bytes).unwrap();
    bytes
}

pub(super) fn tree() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp
        .path()
        .join("org__m")
        .join("answer_mean")
        .join("templated");
    fs::create_dir_all(&dir).unwrap();
    let mut personas = serde_json::Map::new();
    for id in ["a", "b"] {
        let bytes = vector_file(&dir, id, &[2, 3]);
        personas.insert(
            id.into(),
            serde_json::json!({"name": id, "sample_ids": ["q"], "n_samples": 1,
                               "sha256": crate::hashing::sha256_bytes(&bytes)}),
        );
    }
    let manifest = serde_json::json!({"num_layers": 2, "hidden_size": 3, "personas": personas,
                                      "variant": "templated", "mask_strategy": "answer_mean"});
    fs::write(dir.join(MANIFEST_FILENAME), manifest.to_string()).unwrap();
    (tmp, dir)
}

/// `dir/c.safetensors` as a link to a vector file in a folder outside the tree (kept
/// alive by the returned guard).
pub(super) fn link_outside(dir: &Path) -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    vector_file(outside.path(), "c", &[2, 3]);
    std::os::unix::fs::symlink(
        outside.path().join("c.safetensors"),
        dir.join("c.safetensors"),
    )
    .unwrap();
    outside
}

pub(super) fn kinds(report: &Report) -> Vec<&'static str> {
    report.problems.iter().map(|p| p.kind).collect()
}
