//! Writing one split: file and row-group layout, parallel row-group encoding, and the
//! in-order append that keeps the output bytes deterministic.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use arrow_schema::Schema;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;

use super::read::{check_component, check_split_name, read_vector, ManifestFile, Row};
use super::schema::{arrow_schema, build_batch, writer_properties};
use super::{PackageOptions, SplitReport, SplitSource};
use crate::error::{Error, Result};

/// Decoded bytes handed to the parquet writer per call: one (42, 3584) persona. Each
/// encoder holds a batch and its nesting levels (4 bytes per value), so 4 MiB batches cost
/// ~25 MiB more peak memory than this, at no measured speed gain.
const BATCH_BYTES: u64 = 1 << 20;
/// Row groups encoded or awaiting their append at once (one encoder per thread), so peak
/// memory is about this many encoded row groups.
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

/// Runs `encode(i)` for `i` in `0..n` on `encoders` threads and hands each result to
/// `append` in order of `i`. A group starts encoding only while fewer than `encoders`
/// groups are encoded or waiting, and one leaves that count when it has been appended: so
/// at most `encoders` encoded groups are in memory, however slow `append` (the disk) is.
/// An error from either side stops the others; a panic in `encode` is raised here.
fn encode_in_order<T: Send>(
    n: usize,
    encoders: usize,
    encode: impl Fn(usize) -> Result<T> + Sync,
    mut append: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let encoders = encoders.max(1);
    let (permit_tx, permit_rx) = mpsc::sync_channel::<()>(encoders);
    let permit_rx = Mutex::new(permit_rx);
    let (done_tx, done_rx) = mpsc::channel();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..encoders.min(n) {
            let done_tx = done_tx.clone();
            let (permit_rx, next, encode) = (&permit_rx, &next, &encode);
            scope.spawn(move || loop {
                let permit = permit_rx.lock().map(|rx| rx.recv());
                let i = next.fetch_add(1, Ordering::SeqCst);
                if !matches!(permit, Ok(Ok(()))) || i >= n {
                    return;
                }
                // A panic keeps its message: `py.rs` turns it into `InternalError`.
                let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| encode(i)));
                if done_tx.send((i, encoded)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        for _ in 0..encoders {
            // Cannot fail: the channel holds `encoders` and the receiver is alive.
            let _ = permit_tx.send(());
        }
        let mut waiting = BTreeMap::new();
        for i in 0..n {
            let encoded = loop {
                if let Some(encoded) = waiting.remove(&i) {
                    break encoded;
                }
                let (j, encoded) = done_rx.recv().map_err(|_| {
                    Error::Internal("a row group encoder stopped early".to_string())
                })?;
                waiting.insert(j, encoded);
            };
            let encoded = encoded.unwrap_or_else(|payload| std::panic::resume_unwind(payload))?;
            append(i, encoded)?;
            let _ = permit_tx.send(());
        }
        // Dropping the permits' sender (on return or error) lets idle workers finish.
        drop(permit_tx);
        Ok(())
    })
}

/// Returns the memory freed by an appended row group to the system. glibc keeps freed
/// blocks in its per-thread arenas, and encoded groups of varying sizes fragment them, so
/// without this the resident size crept up with the number of groups written (10,000 x
/// (42, 3584) personas: 147-165 MiB against 139 MiB with it). Linux/glibc only.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim takes its arenas' locks and may be called from any
        // thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
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
    let manifest_file = ManifestFile::open(&source.dir)?;
    let (manifest, ids) = manifest_file.ids()?;
    let dims = (manifest.num_layers, manifest.hidden_size);
    let row_values = dims
        .0
        .checked_mul(dims.1)
        .ok_or_else(|| Error::Manifest(format!("{}: shape overflows", source.dir.display())))?;
    let row_bytes = row_values as u64 * 4;
    let (per_group, per_file, n_files) = layout(ids.len(), row_bytes, opts);
    let config = source.config();
    let config_dir = out.join(&config);
    fs::create_dir_all(&config_dir).map_err(|e| Error::io(&config_dir, e))?;
    let schema = Arc::new(arrow_schema(dims.0, dims.1));
    let props = writer_properties(per_group);
    let batch_rows = ((BATCH_BYTES / row_bytes.max(1)).max(1) as usize).min(per_group);
    let mut files = Vec::with_capacity(n_files);
    let mut written_bytes = 0u64;
    let mut num_bytes = 0u64;
    let encoders = rayon::current_num_threads().clamp(1, MAX_PARALLEL_ROW_GROUPS);
    // An empty split still gets one (empty) file so the config stays loadable.
    for index in 0..n_files {
        let start = index * per_file;
        let end = ids.len().min(start + per_file);
        // Only this file's rows are held: the rest of the manifest stays on disk.
        let file_rows = if start < end {
            manifest_file.rows(ids.get(start), ids.get(end - 1), end - start)?
        } else {
            Vec::new()
        };
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
        let encode = |i: usize| {
            let writers = factory.create_column_writers(i).map_err(fail)?;
            encode_row_group(source, &schema, groups[i], dims, batch_rows, writers).map_err(|e| {
                match e {
                    EncodeError::Pvrs(e) => e,
                    EncodeError::Parquet(e) => fail(e),
                }
            })
        };
        let append = |i: usize, (chunks, bytes): (Vec<ArrowColumnChunk>, u64)| {
            num_bytes += bytes;
            let mut row_group = file_writer.next_row_group().map_err(fail)?;
            for chunk in chunks {
                chunk.append_to_row_group(&mut row_group).map_err(fail)?;
            }
            row_group.close().map_err(fail)?;
            release_freed_memory();
            progress(groups[i].len())
        };
        encode_in_order(groups.len(), encoders, encode, append)?;
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
        num_rows: ids.len(),
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
    fn an_error_mid_file_stops_the_encoders_and_is_returned() {
        let (_tmp, src) = tree(9);
        let one_row = PackageOptions {
            row_group_bytes: 1,
            ..PackageOptions::default()
        };
        fs::remove_file(src.dir.join("p004.safetensors")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut appended = 0;
        let e = write_split(&src, out.path(), &one_row, &mut |n| {
            appended += n;
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("p004.safetensors"), "{e}");
        assert_eq!(appended, 4);
        // An error from the progress callback aborts the same way.
        let (_tmp, src) = tree(9);
        let out = tempfile::tempdir().unwrap();
        let e = write_split(&src, out.path(), &one_row, &mut |_| {
            Err(Error::Internal("stop".to_string()))
        })
        .unwrap_err();
        assert!(e.to_string().contains("stop"));
    }

    #[test]
    fn at_most_one_encoded_group_per_encoder_is_held() {
        // A slow append (a throttled disk): encoded groups must not pile up behind it.
        let held = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let mut order = Vec::new();
        encode_in_order(
            24,
            2,
            |i| {
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                Ok(i)
            },
            |i, encoded| {
                assert_eq!(i, encoded);
                order.push(i);
                std::thread::sleep(std::time::Duration::from_millis(2));
                held.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(order, (0..24).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2);
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
