//! Hub packaging: stream a local activation store into the Hub dataset layout of
//! DESIGN.md ("Hub dataset layout"): one config per `<model_dir>__<mask_strategy>`, one
//! split per variant, one parquet row per persona, plus the `README.md` dataset card.
//!
//! Memory stays bounded by the row group size, whatever the number of personas: a row group's
//! tensors are read, checked and converted to f32 a persona at a time and encoded, and
//! only the encoded row group is held until it is appended to the file. Row groups are
//! encoded in parallel (one per thread, at most `MAX_PARALLEL_ROW_GROUPS`) and appended in
//! order as each is ready; a group starts encoding only when fewer than the encoders are
//! encoded or waiting, so at most one encoded group per encoder is held, however slow the
//! disk. The manifest is read in passes: the sorted persona ids, then each file's rows,
//! so only one file's names and sample ids are in memory. Output bytes depend only on the input
//! tree and the size options (sorted order, no timestamps, no thread-dependent layout), so
//! re-packaging an unchanged tree gives identical files.
//!
//! `discover` finds the store folders to publish, `read` reads and checks their manifests
//! and vectors, `schema` defines the arrow schema and record batches, `write` encodes the
//! parquet files of one split, and `card` renders the dataset card.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

mod card;
mod discover;
mod read;
mod schema;
#[cfg(test)]
mod test_util;
mod write;

pub use card::render_card;
pub use discover::discover;
pub use schema::arrow_schema;
pub use write::{layout, write_split};

use read::ManifestFile;

/// Default uncompressed size of one row group (the packager's memory bound).
pub const DEFAULT_ROW_GROUP_BYTES: u64 = 64 << 20;
/// Default uncompressed size of one parquet file (`datasets`' default `max_shard_size`).
pub const DEFAULT_FILE_BYTES: u64 = 500 << 20;
/// The tensor every persona file holds (DESIGN.md).
pub const TENSOR_NAME: &str = "activations";
const MANIFEST: &str = "manifest.json";

/// Sizing of the written files (uncompressed bytes; a persona is never split).
#[derive(Clone, Copy, Debug)]
pub struct PackageOptions {
    pub row_group_bytes: u64,
    pub file_bytes: u64,
}

impl Default for PackageOptions {
    fn default() -> Self {
        Self {
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            file_bytes: DEFAULT_FILE_BYTES,
        }
    }
}

/// One split to write: the personas of one `<model_dir>/<mask>/<variant>` store folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitSource {
    pub model_dir: String,
    pub mask_strategy: String,
    pub variant: String,
    pub dir: PathBuf,
}

impl SplitSource {
    /// The dataset config name: `<model_dir>__<mask_strategy>`.
    pub fn config(&self) -> String {
        format!("{}__{}", self.model_dir, self.mask_strategy)
    }
}

/// What one split became.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SplitReport {
    pub config: String,
    pub split: String,
    /// Paths relative to the output folder, `<config>/<split>-NNNNN-of-NNNNN.parquet`.
    pub files: Vec<String>,
    pub num_rows: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// Arrow in-memory size of the split (the card's `num_bytes`).
    pub num_bytes: u64,
    /// Bytes written to disk.
    pub written_bytes: u64,
    /// The manifest's `model_source` as `key: value` pairs (the card states it), if any.
    pub model_source: Option<String>,
}

/// Number of rows (personas) each source will produce, for progress totals.
pub fn count_rows(sources: &[SplitSource]) -> Result<usize> {
    sources
        .iter()
        .map(|s| ManifestFile::open(&s.dir)?.count())
        .sum()
}

/// Packages `sources` into `out` and writes `out/README.md`. `out` must not hold files
/// already: stale shards from an earlier run would otherwise be published too.
pub fn package(
    sources: &[SplitSource],
    out: &Path,
    opts: &PackageOptions,
    progress: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<SplitReport>> {
    if opts.row_group_bytes == 0 || opts.file_bytes == 0 {
        return Err(Error::InvalidArgument(
            "row group and file sizes must be positive byte counts".to_string(),
        ));
    }
    if out.exists() {
        let mut entries = fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "output folder {} is not empty; pass a new or empty folder",
                out.display()
            )));
        }
    }
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut reports = Vec::with_capacity(sources.len());
    for source in sources {
        reports.push(write_split(source, out, opts, progress)?);
    }
    let card = render_card(&reports);
    let card_path = out.join("README.md");
    fs::write(&card_path, card).map_err(|e| Error::io(&card_path, e))?;
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::test_util::{read_all, tree};
    use super::*;
    use arrow_array::{Float32Array, ListArray, StringArray};

    #[test]
    fn writes_rows_in_sorted_order_with_exact_values() {
        let (_tmp, src) = tree(5);
        let out = tempfile::tempdir().unwrap();
        let opts = PackageOptions {
            row_group_bytes: 2 * 24,
            file_bytes: 4 * 24,
        };
        let mut seen = 0;
        let reports = package(&[src], out.path(), &opts, &mut |n| {
            seen += n;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 5);
        let r = &reports[0];
        assert_eq!(
            r.files,
            vec![
                "m__x__answer_mean/templated-00000-of-00002.parquet",
                "m__x__answer_mean/templated-00001-of-00002.parquet"
            ]
        );
        let batches = read_all(&out.path().join(&r.files[0]));
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        let ids = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(ids.value(0), "p000");
        let vec = batches[0]
            .column(3)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        let row1 = vec.value(1);
        let row1 = row1.as_any().downcast_ref::<ListArray>().unwrap();
        let layer1 = row1.value(1);
        let layer1 = layer1.as_any().downcast_ref::<Float32Array>().unwrap();
        assert_eq!(layer1.values(), &[13.5, 14.5, 15.5]);
        let card = fs::read_to_string(out.path().join("README.md")).unwrap();
        assert!(card.contains("config_name: \"m__x__answer_mean\""));
    }

    #[test]
    fn the_card_states_a_recorded_model_source() {
        let (_tmp, src) = tree(1);
        let path = src.dir.join(MANIFEST);
        let mut manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        manifest["model_source"] =
            serde_json::json!({"gguf_file": "m.Q4_1.gguf", "quantization": "Q4_1"});
        fs::write(&path, manifest.to_string()).unwrap();
        let out = tempfile::tempdir().unwrap();
        package(&[src], out.path(), &PackageOptions::default(), &mut |_| {
            Ok(())
        })
        .unwrap();
        let card = fs::read_to_string(out.path().join("README.md")).unwrap();
        assert!(
            card.contains("- `m__x__answer_mean`: gguf_file: m.Q4_1.gguf, quantization: Q4_1\n")
        );

        let (_tmp, plain) = tree(1);
        let out = tempfile::tempdir().unwrap();
        package(
            &[plain],
            out.path(),
            &PackageOptions::default(),
            &mut |_| Ok(()),
        )
        .unwrap();
        let card = fs::read_to_string(out.path().join("README.md")).unwrap();
        assert!(!card.contains("other weights"));
    }

    #[test]
    fn output_is_deterministic() {
        let (_tmp, src) = tree(9);
        // One row group, then one row per group: more groups than are encoded at once, so
        // several windows are encoded while earlier ones are appended.
        let one_row = PackageOptions {
            row_group_bytes: 1,
            ..PackageOptions::default()
        };
        for opts in [PackageOptions::default(), one_row] {
            let a = tempfile::tempdir().unwrap();
            let b = tempfile::tempdir().unwrap();
            let mut rows = Vec::new();
            let ra = package(std::slice::from_ref(&src), a.path(), &opts, &mut |n| {
                rows.push(n);
                Ok(())
            })
            .unwrap();
            package(std::slice::from_ref(&src), b.path(), &opts, &mut |_| Ok(())).unwrap();
            assert_eq!(rows.iter().sum::<usize>(), 9);
            for f in ra[0]
                .files
                .iter()
                .chain(std::iter::once(&"README.md".to_string()))
            {
                assert_eq!(
                    fs::read(a.path().join(f)).unwrap(),
                    fs::read(b.path().join(f)).unwrap()
                );
            }
        }
    }

    #[test]
    fn refuses_non_empty_output_and_unsafe_ids() {
        let (_tmp, src) = tree(1);
        let out = tempfile::tempdir().unwrap();
        fs::write(out.path().join("x"), "").unwrap();
        let e = package(
            std::slice::from_ref(&src),
            out.path(),
            &PackageOptions::default(),
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not empty"));
        let manifest = serde_json::json!({"num_layers": 2, "hidden_size": 3,
            "personas": {"../evil": {"name": "x", "sample_ids": []}}});
        fs::write(src.dir.join(MANIFEST), manifest.to_string()).unwrap();
        let e = write_split(
            &src,
            out.path(),
            &PackageOptions::default(),
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.python_class(), "PersonaIdError");
    }
}
