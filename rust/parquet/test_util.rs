//! Fixtures shared by the packaging tests: tiny safetensors files and store trees.

use std::fs::{self, File};
use std::path::Path;

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{discover, SplitSource, MANIFEST, TENSOR_NAME};

pub(super) fn write_st(path: &Path, dtype: &str, shape: [usize; 2], data: &[u8]) {
    let header = serde_json::json!({
        TENSOR_NAME: {"dtype": dtype, "shape": shape, "data_offsets": [0, data.len()]}
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
}

pub(super) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A store tree `root/m__x/answer_mean/templated` with `n` personas of shape (2, 3).
pub(super) fn tree(n: usize) -> (tempfile::TempDir, SplitSource) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m__x/answer_mean/templated");
    fs::create_dir_all(&dir).unwrap();
    let mut personas = serde_json::Map::new();
    for i in 0..n {
        let id = format!("p{i:03}");
        let v: Vec<f32> = (0..6).map(|j| (i * 10 + j) as f32 + 0.5).collect();
        write_st(
            &dir.join(format!("{id}.safetensors")),
            "F32",
            [2, 3],
            &f32_bytes(&v),
        );
        personas.insert(
            id.clone(),
            serde_json::json!({"name": format!("Persona {i} ✨"), "sample_ids": [format!("q{i}"), "shared"]}),
        );
    }
    let manifest = serde_json::json!({"num_layers": 2, "hidden_size": 3, "personas": personas});
    fs::write(dir.join(MANIFEST), manifest.to_string()).unwrap();
    let src = discover(tmp.path(), None, None).unwrap().remove(0);
    (tmp, src)
}

pub(super) fn read_all(path: &Path) -> Vec<RecordBatch> {
    let f = File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}
