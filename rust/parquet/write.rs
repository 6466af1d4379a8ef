//! Writing one split: file and row-group layout, parallel row-group encoding, and the
//! in-order append that keeps the output bytes deterministic.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_schema::Schema;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;

use super::read::{check_component, check_split_name, read_manifest, read_vector, Row};
use super::schema::{arrow_schema, build_batch, writer_properties};
use super::{PackageOptions, SplitReport, SplitSource};
use crate::error::{Error, Result};

/// Decoded bytes handed to the parquet writer per call (a few personas).
const BATCH_BYTES: u64 = 4 << 20;
/// Row groups encoded at once (one per thread): peak memory is about this many row groups.
const MAX_PARALLEL_ROW_GROUPS: usize = 4;

/// Rows per row group and per file for rows of `row_bytes` uncompressed bytes.
pub fn layout(num_rows: usize, row_bytes: u64, opts: &PackageOptions) -> (usize, usize, usize) {
    let row_bytes = row_bytes.max(1);
    // A file smaller than a row group caps the row group.
    let group_bytes = opts.row_group_bytes.min(opts.file_bytes);
    let per_group = ((group_bytes / row_bytes).max(1)) as usize;
    let groups_per_file = (opts.file_bytes / (row_bytes * per_group as u64)).max(1) as usize;
    let per_file = per_group * groups_per_file;
    let files = num_rows.div_ceil(per_file).max(1);
    (per_group, per_file, files)
}

enum EncodeError {
    Pvrs(Error),
    Parquet(parquet::errors::ParquetError),
}

impl From<Error> for EncodeError {
    fn from(e: Error) -> Self {
        EncodeError::Pvrs(e)
    }
}

impl From<parquet::errors::ParquetError> for EncodeError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        EncodeError::Parquet(e)
    }
}

/// Reads, checks and encodes one row group, `batch_rows` personas at a time, so only the
/// encoded (compressed) row group and one batch of vectors are in memory. Returns the
/// column chunks and the group's arrow size.
fn encode_row_group(
    source: &SplitSource,
    schema: &Arc<Schema>,
    group: &[Row],
    dims: (usize, usize),
    batch_rows: usize,
    mut writers: Vec<ArrowColumnWriter>,
) -> std::result::Result<(Vec<ArrowColumnChunk>, u64), EncodeError> {
    let row_values = dims.0 * dims.1;
    let mut arrow_bytes = 0u64;
    for rows in group.chunks(batch_rows.max(1)) {
        let mut values = vec![0f32; rows.len() * row_values];
        values
            .par_chunks_mut(row_values)
            .zip(rows.par_iter())
            .try_for_each_init(Vec::new, |buf, (dst, row)| {
                read_vector(&source.dir, &row.id, dims, buf, dst)
            })?;
        let batch = build_batch(schema, rows, dims, values)?;
        arrow_bytes += batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
            .sum::<u64>();
        let mut leaf_writers = writers.iter_mut();
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, column)? {
                let writer = leaf_writers.next().ok_or_else(|| {
                    Error::Internal("parquet leaf columns and writers disagree".to_string())
                })?;
                writer.write(&leaf)?;
            }
        }
    }
    let chunks = writers
        .into_iter()
        .map(|w| w.close())
        .collect::<parquet::errors::Result<Vec<_>>>()?;
    Ok((chunks, arrow_bytes))
}

/// Writes one split to `<out>/<config>/<split>-NNNNN-of-NNNNN.parquet`. `progress` is told
/// how many rows each finished row group held; an error from it aborts the packaging.
pub fn write_split(
    source: &SplitSource,
    out: &Path,
    opts: &PackageOptions,
    progress: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<SplitReport> {
    check_component("model folder", &source.model_dir, &source.dir)?;
    check_component("mask folder", &source.mask_strategy, &source.dir)?;
    check_split_name(&source.variant, &source.dir)?;
    let (manifest, rows) = read_manifest(&source.dir)?;
    let dims = (manifest.num_layers, manifest.hidden_size);
    let row_values = dims
        .0
        .checked_mul(dims.1)
        .ok_or_else(|| Error::Manifest(format!("{}: shape overflows", source.dir.display())))?;
    let row_bytes = row_values as u64 * 4;
    let (per_group, per_file, n_files) = layout(rows.len(), row_bytes, opts);
    let config = source.config();
    let config_dir = out.join(&config);
    fs::create_dir_all(&config_dir).map_err(|e| Error::io(&config_dir, e))?;
    let schema = Arc::new(arrow_schema(dims.0, dims.1));
    let props = writer_properties(per_group);
    let batch_rows = ((BATCH_BYTES / row_bytes.max(1)).max(1) as usize).min(per_group);
    let mut files = Vec::with_capacity(n_files);
    let mut written_bytes = 0u64;
    let mut num_bytes = 0u64;
    // An empty split still gets one (empty) file so the config stays loadable.
    let shards: Vec<&[Row]> = if rows.is_empty() {
        vec![&rows[..]]
    } else {
        rows.chunks(per_file).collect()
    };
    let window = rayon::current_num_threads().clamp(1, MAX_PARALLEL_ROW_GROUPS);
    for (index, file_rows) in shards.into_iter().enumerate() {
        let rel = format!(
            "{config}/{}-{index:05}-of-{n_files:05}.parquet",
            source.variant
        );
        let path = out.join(&rel);
        let fail =
            |e: parquet::errors::ParquetError| Error::Packaging(format!("{}: {e}", path.display()));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        // ArrowWriter sets up the file (schema, arrow metadata); its lower-level parts let
        // row groups be encoded in parallel and appended in order, giving the same bytes as
        // a sequential write.
        let (mut file_writer, factory) =
            ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props.clone()))
                .and_then(|w| w.into_serialized_writer())
                .map_err(fail)?;
        let groups: Vec<&[Row]> = file_rows.chunks(per_group).collect();
        let encode_window = |w: usize, window_groups: &[&[Row]]| {
            window_groups
                .par_iter()
                .enumerate()
                .map(|(i, group)| {
                    let writers = factory
                        .create_column_writers(w * window + i)
                        .map_err(fail)?;
                    encode_row_group(source, &schema, group, dims, batch_rows, writers).map_err(
                        |e| match e {
                            EncodeError::Pvrs(e) => e,
                            EncodeError::Parquet(e) => fail(e),
                        },
                    )
                })
                .collect::<Result<Vec<_>>>()
        };
        let mut append = |window_groups: &[&[Row]], encoded: Vec<(Vec<ArrowColumnChunk>, u64)>| {
            for (group, (chunks, bytes)) in window_groups.iter().zip(encoded) {
                num_bytes += bytes;
                let mut row_group = file_writer.next_row_group().map_err(fail)?;
                for chunk in chunks {
                    chunk.append_to_row_group(&mut row_group).map_err(fail)?;
                }
                row_group.close().map_err(fail)?;
                progress(group.len())?;
            }
            Ok::<(), Error>(())
        };
        // Appending one window (file I/O, progress) overlaps encoding the next one; at most
        // two windows of encoded row groups are held at once.
        std::thread::scope(|scope| {
            let mut ready: Option<(&[&[Row]], Vec<_>)> = None;
            for (w, window_groups) in groups.chunks(window).enumerate() {
                let encoding = scope.spawn(move || encode_window(w, window_groups));
                if let Some((done, encoded)) = ready.take() {
                    append(done, encoded)?;
                }
                // A panic keeps its message: `py.rs` turns it into `InternalError`.
                let encoded = encoding
                    .join()
                    .unwrap_or_else(|payload| std::panic::resume_unwind(payload))?;
                ready = Some((window_groups, encoded));
            }
            match ready {
                Some((done, encoded)) => append(done, encoded),
                None => Ok(()),
            }
        })?;
        let mut sink = file_writer.into_inner().map_err(fail)?;
        sink.flush().map_err(|e| Error::io(&path, e))?;
        // No fsync: the package is a staging folder, rebuilt from the store if lost.
        let file = sink
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        written_bytes += file.metadata().map_err(|e| Error::io(&path, e))?.len();
        files.push(rel);
    }
    Ok(SplitReport {
        config,
        split: source.variant.clone(),
        files,
        num_rows: rows.len(),
        num_layers: dims.0,
        hidden_size: dims.1,
        num_bytes,
        written_bytes,
        model_source: manifest.model_source.as_ref().map(describe_source),
    })
}

/// `{"gguf_file": "x.gguf", "quantization": "Q4_1"}` -> `gguf_file: x.gguf, quantization: Q4_1`.
fn describe_source(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{read_all, tree};
    use super::*;

    #[test]
    fn empty_split_writes_one_loadable_file() {
        let (_tmp, src) = tree(0);
        let out = tempfile::tempdir().unwrap();
        let r = write_split(
            &src,
            out.path(),
            &PackageOptions::default(),
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(
            r.files,
            vec!["m__x__answer_mean/templated-00000-of-00001.parquet"]
        );
        assert_eq!(r.num_rows, 0);
        let rows: usize = read_all(&out.path().join(&r.files[0]))
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 0);
    }

    #[test]
    fn layout_never_splits_a_row_and_counts_files() {
        let opts = PackageOptions {
            row_group_bytes: 100,
            file_bytes: 250,
        };
        assert_eq!(layout(10, 30, &opts), (3, 6, 2));
        assert_eq!(layout(0, 30, &opts), (3, 6, 1));
        // Rows larger than a row group: one row per group.
        assert_eq!(layout(3, 1000, &opts), (1, 1, 3));
        // Files smaller than a row group: one row group per file.
        let small_files = PackageOptions {
            row_group_bytes: 1000,
            file_bytes: 60,
        };
        assert_eq!(layout(5, 30, &small_files), (2, 2, 3));
    }
}
