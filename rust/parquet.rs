//! Hub packaging: stream a local activation store into the Hub dataset layout of
//! DESIGN.md ("Hub dataset layout"): one config per `<model_dir>__<mask_strategy>`, one
//! split per variant, one parquet row per persona, plus the `README.md` dataset card.
//!
//! Memory stays bounded by the row group size, whatever the number of personas: a row group's
//! tensors are read, checked and converted to f32 a few personas at a time and encoded, and
//! only the encoded row group is held until it is appended to the file. Row groups are
//! encoded in parallel (one per thread, at most `MAX_PARALLEL_ROW_GROUPS`), the next window
//! of them while the last one is appended, so peak memory is about twice that many encoded
//! row groups; they are appended in order. Output bytes depend only on the input
//! tree and the size options (sorted order, no timestamps, no thread-dependent layout), so
//! re-packaging an unchanged tree gives identical files.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Float32Array, ListArray, RecordBatch, StringArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::aggregate::{decode_into, Dtype};
use crate::error::{Error, Result};
use crate::header::{open_regular, parse_header, MAX_HEADER_BYTES};

/// Default uncompressed size of one row group (the packager's memory bound).
pub const DEFAULT_ROW_GROUP_BYTES: u64 = 64 << 20;
/// Default uncompressed size of one parquet file (`datasets`' default `max_shard_size`).
pub const DEFAULT_FILE_BYTES: u64 = 500 << 20;
/// The tensor every persona file holds (DESIGN.md).
pub const TENSOR_NAME: &str = "activations";
const MANIFEST: &str = "manifest.json";
/// Arrow's list item name as `pyarrow`/`datasets` write it (parquet-compliant nesting).
const ITEM: &str = "element";
/// Decoded bytes handed to the parquet writer per call (a few personas).
const BATCH_BYTES: u64 = 4 << 20;
/// Row groups encoded at once (one per thread): peak memory is about this many row groups.
const MAX_PARALLEL_ROW_GROUPS: usize = 4;

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
}

#[derive(Deserialize)]
struct ManifestPersona {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    sample_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    num_layers: usize,
    hidden_size: usize,
    #[serde(default)]
    personas: BTreeMap<String, ManifestPersona>,
}

/// A persona row before its tensor is read.
struct Row {
    id: String,
    name: String,
    sample_ids: Vec<String>,
}

fn sorted_subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.path().is_dir() {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) if !name.starts_with('.') => names.push(name),
            _ => {}
        }
    }
    names.sort();
    Ok(names)
}

/// Every `<model_dir>/<mask>/<variant>/manifest.json` under `root`, sorted, optionally
/// restricted to some model folders and mask strategies. Names asked for but absent are an
/// error (a typo should not silently publish nothing).
pub fn discover(
    root: &Path,
    model_dirs: Option<&[String]>,
    masks: Option<&[String]>,
) -> Result<Vec<SplitSource>> {
    if !root.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "activation store {} does not exist; pass the folder that holds <model>/<mask>/<variant>/manifest.json (--root)",
            root.display()
        )));
    }
    let present = sorted_subdirs(root)?;
    let models: Vec<String> = match model_dirs {
        Some(wanted) => {
            for m in wanted {
                if !present.contains(m) {
                    return Err(Error::InvalidArgument(format!(
                        "no activations for model folder {m:?} in {}; found: {}",
                        root.display(),
                        listing(&present)
                    )));
                }
            }
            let mut w = wanted.to_vec();
            w.sort();
            w.dedup();
            w
        }
        None => present,
    };
    let mut out = Vec::new();
    for model in &models {
        let model_path = root.join(model);
        let present_masks = sorted_subdirs(&model_path)?;
        let chosen: Vec<String> = match masks {
            Some(wanted) => {
                let mut w: Vec<String> = wanted.to_vec();
                w.sort();
                w.dedup();
                for m in &w {
                    if !present_masks.contains(m) {
                        return Err(Error::InvalidArgument(format!(
                            "model folder {model:?} has no {m:?} activations; found: {}",
                            listing(&present_masks)
                        )));
                    }
                }
                w
            }
            None => present_masks,
        };
        for mask in chosen {
            for variant in sorted_subdirs(&model_path.join(&mask))? {
                let dir = model_path.join(&mask).join(&variant);
                if dir.join(MANIFEST).is_file() {
                    out.push(SplitSource {
                        model_dir: model.clone(),
                        mask_strategy: mask.clone(),
                        variant,
                        dir,
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no manifest.json found under {}; run `pvrs extract` first or pass the right --root",
            root.display()
        )));
    }
    Ok(out)
}

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

/// Rejects names that could escape their folder (the store's persona-id rules).
fn check_component(what: &str, name: &str, origin: &Path) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 200
        || name.contains("..")
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(Error::PersonaId(format!(
            "{}: {what} {name:?} is not a safe file name (non-empty, at most 200 bytes, no path separators, `..` or control characters)",
            origin.display()
        )));
    }
    Ok(())
}

/// Split names must be valid `datasets` split names (`\w+(\.\w+)*`).
fn check_split_name(name: &str, origin: &Path) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Packaging(format!(
            "{}: variant folder {name:?} is not a valid dataset split name (letters, digits, `_`, `.`); rename it",
            origin.display()
        )))
    }
}

fn read_manifest(dir: &Path) -> Result<(Manifest, Vec<Row>)> {
    let path = dir.join(MANIFEST);
    let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        Error::Manifest(format!(
            "{}: not a valid activation manifest ({e}); re-run the extraction that wrote it",
            path.display()
        ))
    })?;
    if manifest.num_layers == 0 || manifest.hidden_size == 0 {
        return Err(Error::Manifest(format!(
            "{}: num_layers and hidden_size must be positive (got {} x {})",
            path.display(),
            manifest.num_layers,
            manifest.hidden_size
        )));
    }
    let mut rows = Vec::with_capacity(manifest.personas.len());
    // BTreeMap iteration: byte order of persona ids, the deterministic row order.
    for (id, p) in &manifest.personas {
        check_component("persona id", id, &path)?;
        rows.push(Row {
            id: id.clone(),
            name: p.name.clone().unwrap_or_else(|| id.clone()),
            sample_ids: p.sample_ids.clone(),
        });
    }
    Ok((manifest, rows))
}

/// Reads `<dir>/<id>.safetensors` into `dst` (length `num_layers * hidden_size`) as f32,
/// checking the header bounds, dtype, shape and finiteness.
fn read_vector(
    dir: &Path,
    id: &str,
    dims: (usize, usize),
    buf: &mut Vec<u8>,
    dst: &mut [f32],
) -> Result<()> {
    let path = dir.join(format!("{id}.safetensors"));
    buf.clear();
    let corrupt = |why: String| {
        Error::Artifact(format!(
            "{}: {why}; re-run the extraction for persona {id:?}",
            path.display()
        ))
    };
    let link = fs::symlink_metadata(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            corrupt("listed in manifest.json but missing".to_string())
        } else {
            Error::io(&path, e)
        }
    })?;
    // What is published must be the store's own file: a link could publish anything.
    if link.file_type().is_symlink() {
        return Err(corrupt(
            "a symbolic link, not a file pvrs wrote".to_string(),
        ));
    }
    let file = open_regular(&path)?;
    // A vector file is its header plus at most 8 bytes per value: read no more than that.
    let limit = 8 + MAX_HEADER_BYTES + (dims.0 as u64) * (dims.1 as u64) * 8;
    if link.len() > limit {
        return Err(corrupt(format!(
            "{} bytes, far more than a ({}, {}) vector",
            link.len(),
            dims.0,
            dims.1
        )));
    }
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit), buf)
        .map_err(|e| Error::io(&path, e))?;
    // The store's parser bounds-checks the header length, the JSON, every tensor's offsets
    // and their exact tiling of the data, as `pvrs validate` and aggregation do.
    let header = parse_header(buf, buf.len() as u64)
        .map_err(|why| corrupt(format!("not a valid safetensors file ({why})")))?;
    let info = header
        .tensor(TENSOR_NAME)
        .ok_or_else(|| corrupt(format!("has no tensor named {TENSOR_NAME:?}")))?;
    if info.shape != [dims.0 as u64, dims.1 as u64] {
        return Err(Error::Manifest(format!(
            "{}: tensor shape {:?} disagrees with the manifest's ({}, {}); re-run the extraction",
            path.display(),
            info.shape,
            dims.0,
            dims.1
        )));
    }
    let dtype = Dtype::parse(&info.dtype).ok_or_else(|| {
        corrupt(format!(
            "tensor {TENSOR_NAME:?} has dtype {}; expected F32, BF16 or F16",
            info.dtype
        ))
    })?;
    // In range: parse_header checked `end <= file length` for every tensor.
    decode_into(dtype, &buf[info.begin as usize..info.end as usize], dst);
    if let Some(pos) = dst.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "{}: layer {} dimension {} is {}; fix or re-extract persona {id:?} before publishing",
            path.display(),
            pos / dims.1,
            pos % dims.1,
            dst[pos]
        )));
    }
    Ok(())
}

/// The arrow schema of every packaged file, with `datasets`' feature metadata so the
/// parquet files alone (without the card) load as `Array2D`.
pub fn arrow_schema(num_layers: usize, hidden_size: usize) -> Schema {
    let features = serde_json::json!({"info": {"features": {
        "persona_id": {"dtype": "string", "_type": "Value"},
        "name": {"dtype": "string", "_type": "Value"},
        // `Sequence` rather than `List`: readable by datasets 2.x as well as 4.x+.
        "sample_ids": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
        "vector": {"shape": [num_layers, hidden_size], "dtype": "float32", "_type": "Array2D"},
    }}});
    Schema::new(vec![
        Field::new("persona_id", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("sample_ids", list_of(DataType::Utf8), true),
        Field::new("vector", list_of(list_of(DataType::Float32)), true),
    ])
    .with_metadata(std::collections::HashMap::from([(
        "huggingface".to_string(),
        features.to_string(),
    )]))
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new(ITEM, item, true)))
}

fn writer_properties(rows_per_group: usize) -> WriterProperties {
    let vector_leaf = ColumnPath::new(
        ["vector", "list", ITEM, "list", ITEM]
            .map(String::from)
            .to_vec(),
    );
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(rows_per_group))
        // Ids and names are unique per row; only sample ids repeat across personas.
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(
            ColumnPath::new(["sample_ids", "list", ITEM].map(String::from).to_vec()),
            true,
        )
        .set_statistics_enabled(EnabledStatistics::Chunk)
        // Min/max of activation values prune nothing and cost a pass over the data.
        .set_column_statistics_enabled(vector_leaf.clone(), EnabledStatistics::None)
        // Byte-stream-split puts the float exponents together, which zstd compresses well.
        .set_column_encoding(vector_leaf, Encoding::BYTE_STREAM_SPLIT)
        .set_created_by(format!("pvrs {} (parquet-rs)", env!("CARGO_PKG_VERSION")))
        .build()
}

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

fn build_batch(
    schema: &Arc<Schema>,
    rows: &[Row],
    dims: (usize, usize),
    values: Vec<f32>,
) -> Result<RecordBatch> {
    let (layers, hidden) = dims;
    let ids = StringArray::from_iter_values(rows.iter().map(|r| r.id.as_str()));
    let names = StringArray::from_iter_values(rows.iter().map(|r| r.name.as_str()));
    let mut samples = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        ITEM,
        DataType::Utf8,
        true,
    )));
    for r in rows {
        for s in &r.sample_ids {
            samples.values().append_value(s);
        }
        samples.append(true);
    }
    let inner_field = Arc::new(Field::new(ITEM, DataType::Float32, true));
    let outer_field = Arc::new(Field::new(ITEM, list_of(DataType::Float32), true));
    // Offsets are i32: a row group must hold fewer than 2^31 values.
    if rows.len() * layers * hidden > i32::MAX as usize {
        return Err(Error::Packaging(format!(
            "a row group of {} personas x ({layers}, {hidden}) values is too large for 32-bit list offsets; lower the row group size",
            rows.len()
        )));
    }
    let inner_offsets =
        OffsetBuffer::from_lengths(std::iter::repeat(hidden).take(rows.len() * layers));
    let outer_offsets = OffsetBuffer::from_lengths(std::iter::repeat(layers).take(rows.len()));
    let inner = ListArray::try_new(
        inner_field,
        inner_offsets,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .map_err(|e| Error::Internal(format!("building the inner vector lists: {e}")))?;
    let outer = ListArray::try_new(outer_field, outer_offsets, Arc::new(inner), None)
        .map_err(|e| Error::Internal(format!("building the vector lists: {e}")))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(names),
        Arc::new(samples.finish()),
        Arc::new(outer),
    ];
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("building a record batch: {e}")))
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
    })
}

/// Number of rows (personas) each source will produce, for progress totals.
pub fn count_rows(sources: &[SplitSource]) -> Result<usize> {
    sources
        .iter()
        .map(|s| read_manifest(&s.dir).map(|(_, rows)| rows.len()))
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

/// A YAML scalar: JSON strings are valid YAML double-quoted scalars.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The dataset card: YAML `configs` (data files per split) and `dataset_info` (features,
/// split sizes) so `datasets.load_dataset(repo, config, split=variant)` needs no code.
pub fn render_card(reports: &[SplitReport]) -> String {
    let mut by_config: BTreeMap<&str, Vec<&SplitReport>> = BTreeMap::new();
    for r in reports {
        by_config.entry(&r.config).or_default().push(r);
    }
    for splits in by_config.values_mut() {
        splits.sort_by(|a, b| a.split.cmp(&b.split));
    }
    let mut y = String::from("---\nconfigs:\n");
    for (config, splits) in &by_config {
        y += &format!("- config_name: {}\n  data_files:\n", q(config));
        for s in splits {
            y += &format!("  - split: {}\n    path:\n", q(&s.split));
            for f in &s.files {
                y += &format!("    - {}\n", q(f));
            }
        }
    }
    y += "dataset_info:\n";
    for (config, splits) in &by_config {
        let (layers, hidden) = (splits[0].num_layers, splits[0].hidden_size);
        y += &format!(
            "- config_name: {}\n  features:\n  - name: persona_id\n    dtype: string\n  - name: name\n    dtype: string\n  - name: sample_ids\n    sequence: string\n  - name: vector\n    dtype:\n      array2_d:\n        shape:\n        - {layers}\n        - {hidden}\n        dtype: float32\n  splits:\n",
            q(config)
        );
        for s in splits {
            y += &format!(
                "  - name: {}\n    num_bytes: {}\n    num_examples: {}\n",
                q(&s.split),
                s.num_bytes,
                s.num_rows
            );
        }
        y += &format!(
            "  download_size: {}\n  dataset_size: {}\n",
            splits.iter().map(|s| s.written_bytes).sum::<u64>(),
            splits.iter().map(|s| s.num_bytes).sum::<u64>()
        );
    }
    y += "tags:\n- persona-vectors\n- interpretability\n- pvrs\n---\n\n";
    y += "# Persona vectors\n\n";
    y += "Per-persona mean residual-stream activations, one `(num_layers, hidden_size)` float32 \
          vector per persona, written by pvrs (layout compatible with \
          persona-vectors 0.6.x). Row `i` of a vector is the output of decoder block `i`.\n\n";
    y += "Each config is `<model>__<mask_strategy>` (the model id with `/` replaced by `__`); \
          each split is a prompt variant; each row is a persona with columns `persona_id`, \
          `name`, `sample_ids` and `vector` (`Array2D`).\n\n";
    y += "| config | split | personas | shape |\n|---|---|---|---|\n";
    for (config, splits) in &by_config {
        for s in splits {
            y += &format!(
                "| `{config}` | `{}` | {} | ({}, {}) |\n",
                s.split, s.num_rows, s.num_layers, s.hidden_size
            );
        }
    }
    if let Some((config, splits)) = by_config.iter().next() {
        y += &format!(
            "\n```python\nfrom datasets import load_dataset\n\nds = load_dataset(\"<this repo>\", {}, split={})\nds = ds.with_format(\"numpy\")\nvector = ds[0][\"vector\"]  # ({}, {}) float32\n```\n",
            q(config),
            q(&splits[0].split),
            splits[0].num_layers,
            splits[0].hidden_size
        );
        y += "\nOr with pvrs: `pvrs.hub.HFPersonaVectorStore(\"<this repo>\", model_name, mask_strategy).load(persona_id, variant)`.\n";
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn write_st(path: &Path, dtype: &str, shape: [usize; 2], data: &[u8]) {
        let header = serde_json::json!({
            TENSOR_NAME: {"dtype": dtype, "shape": shape, "data_offsets": [0, data.len()]}
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        fs::write(path, bytes).unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A store tree `root/m__x/answer_mean/templated` with `n` personas of shape (2, 3).
    fn tree(n: usize) -> (tempfile::TempDir, SplitSource) {
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

    fn read_all(path: &Path) -> Vec<RecordBatch> {
        let f = File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn discovers_sorted_sources() {
        let (tmp, src) = tree(1);
        assert_eq!(src.config(), "m__x__answer_mean");
        assert_eq!(src.variant, "templated");
        let err = discover(tmp.path(), Some(&["nope".into()]), None).unwrap_err();
        assert!(err.to_string().contains("nope"));
        let err = discover(tmp.path(), None, Some(&["persona_last".into()])).unwrap_err();
        assert!(err.to_string().contains("answer_mean"));
    }

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
    fn links_and_devices_are_never_read_or_published() {
        let (_tmp, src) = tree(2);
        let out = tempfile::tempdir().unwrap();
        let file = src.dir.join("p001.safetensors");
        fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
        let err = package(
            std::slice::from_ref(&src),
            out.path(),
            &PackageOptions::default(),
            &mut |_| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a symbolic link"), "{err}");
        assert!(crate::header::open_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }

    #[test]
    fn converts_half_precision() {
        let (_tmp, src) = tree(1);
        let v = [1.5f32, -2.0, 0.25, 3.0, 4.0, -0.5];
        let bf: Vec<u8> = v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        write_st(&src.dir.join("p000.safetensors"), "BF16", [2, 3], &bf);
        let mut dst = vec![0f32; 6];
        read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap();
        assert_eq!(dst, v);
        let f16: Vec<u8> = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        write_st(&src.dir.join("p000.safetensors"), "F16", [2, 3], &f16);
        read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap();
        assert_eq!(dst, v);
    }

    #[test]
    fn rejects_corrupt_inputs_with_typed_errors() {
        let (_tmp, src) = tree(1);
        let path = src.dir.join("p000.safetensors");
        let mut dst = vec![0f32; 6];
        let good = fs::read(&path).unwrap();
        // Truncated data section.
        fs::write(&path, &good[..good.len() - 3]).unwrap();
        let e = read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap_err();
        assert_eq!(e.python_class(), "ArtifactError", "{e}");
        // Header length pointing past the end.
        let mut bad = good.clone();
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        fs::write(&path, &bad).unwrap();
        let e = read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap_err();
        assert_eq!(e.python_class(), "ArtifactError");
        // Shape disagreeing with the manifest.
        write_st(&path, "F32", [3, 2], &f32_bytes(&[0.0; 6]));
        let e = read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap_err();
        assert_eq!(e.python_class(), "ManifestError");
        // NaN.
        write_st(
            &path,
            "F32",
            [2, 3],
            &f32_bytes(&[0.0, 1.0, 2.0, 3.0, f32::NAN, 5.0]),
        );
        let e = read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap_err();
        assert_eq!(e.python_class(), "NonFiniteError");
        assert!(e.to_string().contains("layer 1 dimension 1"), "{e}");
        // Missing file.
        fs::remove_file(&path).unwrap();
        let e = read_vector(&src.dir, "p000", (2, 3), &mut Vec::new(), &mut dst).unwrap_err();
        assert!(e.to_string().contains("missing"));
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
