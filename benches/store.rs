//! Criterion benches of the store's Rust core: header parsing, streamed mean and
//! single-layer stacking over a folder of (42, 3584) vectors, and tree validation.
//! `cargo bench --bench store`; the Python comparison is `benches/bench_store.py`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};

use _core::aggregate::{reduce, stack, Reduction};
use _core::header::read_header;
use _core::manifest::validate;

const FILES: usize = 64;
const LAYERS: usize = 42;
const HIDDEN: usize = 3584;

fn write_vectors(dir: &std::path::Path, dtype: &str) -> Vec<PathBuf> {
    let size = if dtype == "F32" { 4 } else { 2 };
    let data: Vec<u8> = (0..LAYERS * HIDDEN * size)
        .map(|i| (i % 97) as u8 & 0x3f)
        .collect();
    let json = format!(
        r#"{{"activations":{{"dtype":"{dtype}","shape":[{LAYERS},{HIDDEN}],"data_offsets":[0,{}]}}}}"#,
        data.len()
    );
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json.as_bytes());
    bytes.extend(&data);
    (0..FILES)
        .map(|i| {
            let path = dir.join(format!("p{i}.safetensors"));
            std::fs::write(&path, &bytes).expect("write bench file");
            path
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    for dtype in ["F32", "BF16"] {
        let dir = tmp.path().join(dtype);
        std::fs::create_dir(&dir).expect("mkdir");
        let paths = write_vectors(&dir, dtype);
        c.bench_function(&format!("mean_{FILES}x{LAYERS}x{HIDDEN}_{dtype}"), |b| {
            b.iter(|| {
                reduce(black_box(&paths), "activations", None, Reduction::Mean).expect("mean")
            })
        });
        c.bench_function(&format!("stack_one_layer_{FILES}_{dtype}"), |b| {
            b.iter(|| stack(black_box(&paths), "activations", Some(&[20])).expect("stack"))
        });
        c.bench_function(&format!("read_header_{dtype}"), |b| {
            b.iter(|| read_header(black_box(&paths[0])).expect("header"))
        });
    }
    let variant = tmp.path().join("m").join("answer_mean").join("templated");
    std::fs::create_dir_all(&variant).expect("mkdir");
    let paths = write_vectors(&variant, "F32");
    let personas: serde_json::Map<String, serde_json::Value> = paths
        .iter()
        .enumerate()
        .map(|(i, _)| {
            (
                format!("p{i}"),
                serde_json::json!({"name": "x", "sample_ids": []}),
            )
        })
        .collect();
    let manifest =
        serde_json::json!({"num_layers": LAYERS, "hidden_size": HIDDEN, "personas": personas});
    std::fs::write(variant.join("manifest.json"), manifest.to_string()).expect("manifest");
    c.bench_function(&format!("validate_{FILES}_files"), |b| {
        b.iter(|| validate(black_box(tmp.path()), false).expect("validate"))
    });
}

criterion_group!(store, benches);
criterion_main!(store);
