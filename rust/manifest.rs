//! `pvrs validate`: checks a persona-vector tree (or one variant folder) and reports every
//! problem, never only the first.
//!
//! Per variant folder (`<model_dir>/<mask_strategy>/<variant>/`): the manifest's JSON shape
//! and types, persona ids safe as file names, every recorded persona has its tensor and no
//! tensor is unrecorded, and per tensor file a bounds-checked header (`crate::header`), an
//! `activations` tensor of a float dtype whose shape matches the manifest. `deep` adds a
//! streamed NaN/Inf scan and the sha256 check. Hostile input (truncated files, huge header
//! lengths, overlapping offsets, FIFOs, symlinks leaving the tree, `..` ids) becomes a
//! problem in the report: the walk never follows symlinks and never opens non-regular files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::aggregate::{decode_into, Dtype};
use crate::error::{Error, Result};
use crate::hashing::sha256_file;
use crate::header::{read_header, Header};

pub const MANIFEST_FILENAME: &str = "manifest.json";
pub const LOCK_FILENAME: &str = ".manifest.lock";
pub const TENSOR_KEY: &str = "activations";
pub const TENSOR_SUFFIX: &str = ".safetensors";
pub const SAMPLES_DIRNAME: &str = "samples";
pub const MAX_PERSONA_ID_BYTES: usize = 200;
/// Variant folders sit three levels below the root (`model/strategy/variant`); a little
/// slack lets users point at a parent of the root.
const MAX_DEPTH: usize = 6;
const MAX_MANIFEST_BYTES: u64 = 1 << 30;
const SCAN_CHUNK: usize = 1 << 20;

/// Why a persona id is not a safe file name (None when it is). Mirrors
/// `pvrs.store.validate_persona_id`.
pub fn persona_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".into());
    }
    if id.contains('/') || id.contains('\\') {
        return Some("contains a path separator".into());
    }
    if id.contains("..") {
        return Some("contains '..'".into());
    }
    if id.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    if id.len() > MAX_PERSONA_ID_BYTES {
        return Some(format!(
            "is {} bytes long (at most {MAX_PERSONA_ID_BYTES} in UTF-8)",
            id.len()
        ));
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub path: String,
    pub severity: Severity,
    /// Stable machine-readable category (e.g. `missing_tensor`, `bad_header`).
    pub kind: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub root: String,
    pub deep: bool,
    pub variant_dirs: usize,
    pub personas: usize,
    pub files_checked: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }

    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn problem(
    path: &Path,
    severity: Severity,
    kind: &'static str,
    message: impl Into<String>,
) -> Problem {
    Problem {
        path: path.display().to_string(),
        severity,
        kind,
        message: message.into(),
    }
}

fn error(path: &Path, kind: &'static str, message: impl Into<String>) -> Problem {
    problem(path, Severity::Error, kind, message)
}

fn warning(path: &Path, kind: &'static str, message: impl Into<String>) -> Problem {
    problem(path, Severity::Warning, kind, message)
}

/// What a tensor file must hold.
#[derive(Clone, Debug)]
enum Expect {
    /// A persona vector `(num_layers, hidden_size)` (None where the manifest lacks them).
    Vector {
        shape: Option<(u64, u64)>,
        sha256: Option<String>,
    },
    /// Per-sample vectors `(n, num_layers, hidden_size)` with `n` ids in the metadata.
    Samples { shape: Option<(u64, u64)> },
}

#[derive(Clone, Debug)]
struct FileTask {
    path: PathBuf,
    expect: Expect,
}

/// Validate the tree or variant folder at `path`. `Err` only when `path` itself cannot be
/// read; everything wrong inside it is a `Problem`.
pub fn validate(path: &Path, deep: bool) -> Result<Report> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder; pass an artifacts tree or a variant folder holding manifest.json",
            path.display()
        )));
    }
    let root = fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let mut report = Report {
        root: path.display().to_string(),
        deep,
        ..Report::default()
    };
    let mut variant_dirs = Vec::new();
    walk(path, &root, 0, &mut variant_dirs, &mut report.problems);
    if variant_dirs.is_empty() {
        report.problems.push(error(
            path,
            "no_artifacts",
            "no manifest.json or .safetensors files found; pass an artifacts tree \
             (<root>/<model>/<strategy>/<variant>/) or one variant folder",
        ));
    }
    let mut tasks = Vec::new();
    for dir in &variant_dirs {
        report.personas += check_variant_dir(dir, &mut tasks, &mut report.problems);
    }
    report.variant_dirs = variant_dirs.len();
    report.files_checked = tasks.len();
    let file_problems: Vec<Problem> = tasks
        .par_iter()
        .flat_map_iter(|task| check_file(task, &root, deep))
        .collect();
    report.problems.extend(file_problems);
    report.problems.sort();
    Ok(report)
}

/// Collect variant folders (folders holding a manifest or tensor files) without following
/// symlinks; a symlinked folder is reported when it leads outside the tree.
fn walk(
    dir: &Path,
    root: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(error(dir, "unreadable", format!("cannot list folder: {e}")));
            return;
        }
    };
    let mut is_variant = false;
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            if name != SAMPLES_DIRNAME {
                subdirs.push(path);
            }
        } else if kind.is_symlink() && path.is_dir() {
            symlink_problem(&path, root, problems);
        } else if name == MANIFEST_FILENAME || name.ends_with(TENSOR_SUFFIX) {
            // Symlinked tensor files count too: the variant check reports them.
            is_variant = true;
        }
    }
    if is_variant {
        out.push(dir.to_path_buf());
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    subdirs.sort();
    for sub in subdirs {
        walk(&sub, root, depth + 1, out, problems);
    }
}

/// Report a symlink that leaves the tree (the walk never follows symlinked folders).
fn symlink_problem(path: &Path, root: &Path, problems: &mut Vec<Problem>) {
    match fs::canonicalize(path) {
        Ok(target) if !target.starts_with(root) => problems.push(error(
            path,
            "symlink_outside_tree",
            format!(
                "symlink points outside the tree (to {}); copy the data in instead",
                target.display()
            ),
        )),
        Ok(_) => problems.push(warning(
            path,
            "symlinked_folder",
            "symlinked folder inside the tree is not followed",
        )),
        Err(e) => problems.push(error(
            path,
            "broken_symlink",
            format!("broken symlink ({e})"),
        )),
    }
}

/// The manifest's recorded personas (checked for shape and types), or None when unusable.
struct ManifestView {
    shape: Option<(u64, u64)>,
    personas: BTreeMap<String, Option<String>>,
}

/// Check one variant folder; push per-file work onto `tasks`. Returns the persona count.
fn check_variant_dir(dir: &Path, tasks: &mut Vec<FileTask>, problems: &mut Vec<Problem>) -> usize {
    let manifest_path = dir.join(MANIFEST_FILENAME);
    let view = if manifest_path.exists() || fs::symlink_metadata(&manifest_path).is_ok() {
        read_manifest(&manifest_path, dir, problems)
    } else {
        problems.push(error(
            &manifest_path,
            "missing_manifest",
            "tensor files but no manifest.json (an interrupted first save?); re-run the extraction",
        ));
        None
    };
    let (shape, recorded) = match &view {
        Some(v) => (v.shape, v.personas.clone()),
        None => (None, BTreeMap::new()),
    };

    let mut on_disk = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                // A lossy name would point at another (missing) file: report this one as is.
                problems.push(error(
                    &path,
                    "non_utf8_name",
                    "file name is not valid UTF-8; persona ids are UTF-8, rename or delete it",
                ));
                continue;
            };
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if name == MANIFEST_FILENAME || name == LOCK_FILENAME {
                continue;
            }
            if let Some(id) = name.strip_suffix(TENSOR_SUFFIX) {
                on_disk.insert(id.to_string());
            } else if is_dir && name == SAMPLES_DIRNAME {
                sample_tasks(&path, shape, &recorded, tasks, problems);
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                problems.push(warning(
                    &path,
                    "stale_temp_file",
                    "temporary file left by an interrupted write; safe to delete",
                ));
            } else if !is_dir {
                problems.push(warning(
                    &path,
                    "unexpected_file",
                    "not part of a pvrs variant folder",
                ));
            }
        }
    }
    for (id, sha256) in &recorded {
        if persona_id_problem(id).is_some() {
            continue; // already reported by read_manifest; never build a path from it
        }
        if on_disk.contains(id) {
            tasks.push(FileTask {
                path: dir.join(format!("{id}{TENSOR_SUFFIX}")),
                expect: Expect::Vector {
                    shape,
                    sha256: sha256.clone(),
                },
            });
        } else {
            problems.push(error(
                &dir.join(format!("{id}{TENSOR_SUFFIX}")),
                "missing_tensor",
                format!(
                    "manifest records persona {id:?} but its tensor file is missing; re-extract it"
                ),
            ));
        }
    }
    for id in on_disk.iter().filter(|id| !recorded.contains_key(*id)) {
        let path = dir.join(format!("{id}{TENSOR_SUFFIX}"));
        if view.is_some() {
            problems.push(error(
                &path,
                "orphan_tensor",
                "tensor file not recorded in manifest.json (an interrupted run?); re-run the \
                 extraction to record it or delete the file",
            ));
        }
        // Unrecorded files are still checked (headers, symlinks) so every problem shows.
        tasks.push(FileTask {
            path,
            expect: Expect::Vector {
                shape,
                sha256: None,
            },
        });
    }
    recorded.len()
}

fn sample_tasks(
    dir: &Path,
    shape: Option<(u64, u64)>,
    recorded: &BTreeMap<String, Option<String>>,
    tasks: &mut Vec<FileTask>,
    problems: &mut Vec<Problem>,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        problems.push(error(dir, "unreadable", "cannot list folder"));
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match name.strip_suffix(TENSOR_SUFFIX) {
            Some(id) => {
                if !recorded.contains_key(id) {
                    problems.push(warning(
                        &path,
                        "orphan_samples",
                        format!("per-sample vectors for persona {id:?}, which the manifest does not record"),
                    ));
                }
                tasks.push(FileTask {
                    path,
                    expect: Expect::Samples { shape },
                });
            }
            None if name.starts_with('.') && name.ends_with(".tmp") => problems.push(warning(
                &path,
                "stale_temp_file",
                "temporary file left by an interrupted write; safe to delete",
            )),
            None => problems.push(warning(
                &path,
                "unexpected_file",
                "not part of a pvrs samples folder",
            )),
        }
    }
}

const PROVENANCE_KEYS: [&str; 10] = [
    "format",
    "model",
    "revision",
    "dtype",
    "mask_strategy",
    "variant",
    "layer_convention",
    "pooling",
    "chat_template_sha256",
    "pvrs_version",
];

fn read_manifest(path: &Path, dir: &Path, problems: &mut Vec<Problem>) -> Option<ManifestView> {
    let bad = |problems: &mut Vec<Problem>, msg: String| {
        problems.push(error(path, "bad_manifest", msg));
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.len() <= MAX_MANIFEST_BYTES => {}
        Ok(m) if m.file_type().is_file() => {
            bad(
                problems,
                format!(
                    "manifest is {} bytes; refusing to read more than 1 GiB",
                    m.len()
                ),
            );
            return None;
        }
        Ok(_) => {
            bad(
                problems,
                "manifest.json is not a regular file (symlink, folder or device)".into(),
            );
            return None;
        }
        Err(e) => {
            bad(problems, format!("cannot read: {e}"));
            return None;
        }
    }
    let value: Value = match fs::read(path).map_err(|e| e.to_string()).and_then(|bytes| {
        serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON ({e})"))
    }) {
        Ok(v) => v,
        Err(e) => {
            bad(problems, e);
            return None;
        }
    };
    let Value::Object(top) = value else {
        bad(problems, "manifest is not a JSON object".into());
        return None;
    };
    let positive = |key: &str, problems: &mut Vec<Problem>| -> Option<u64> {
        match top.get(key) {
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => v.as_u64(),
            Some(v) => {
                problems.push(error(
                    path,
                    "bad_manifest",
                    format!("{key:?} must be a positive integer, got {v}"),
                ));
                None
            }
            None => {
                problems.push(error(path, "bad_manifest", format!("missing {key:?}")));
                None
            }
        }
    };
    let num_layers = positive("num_layers", problems);
    let hidden_size = positive("hidden_size", problems);
    for key in PROVENANCE_KEYS {
        if let Some(v) = top.get(key) {
            if !(v.is_string() || v.is_null()) {
                bad(
                    problems,
                    format!("{key:?} must be a string or null, got {v}"),
                );
            }
        }
    }
    if let Some(v) = top.get("format_version") {
        if v.as_u64().is_none() {
            bad(
                problems,
                format!("\"format_version\" must be a non-negative integer, got {v}"),
            );
        }
    }
    // Readers find vectors by folder name, so a manifest filed under another variant or
    // strategy than it records is misleading (a warning: the data itself is intact).
    for (key, folder) in [
        ("variant", dir.file_name()),
        ("mask_strategy", dir.parent().and_then(Path::file_name)),
    ] {
        if let (Some(Value::String(said)), Some(folder)) = (top.get(key), folder) {
            let folder = folder.to_string_lossy();
            if said.as_str() != folder {
                problems.push(warning(
                    path,
                    "misplaced_manifest",
                    format!("records {key}={said:?} but lives in folder {folder:?}; move it back"),
                ));
            }
        }
    }
    let Some(Value::Object(personas)) = top.get("personas") else {
        bad(
            problems,
            "missing \"personas\" object {id: {name, sample_ids}}".into(),
        );
        return None;
    };
    let mut recorded = BTreeMap::new();
    for (id, entry) in personas {
        if let Some(why) = persona_id_problem(id) {
            problems.push(error(
                path,
                "unsafe_persona_id",
                format!("persona id {id:?} {why}; persona ids must be safe file names"),
            ));
            continue;
        }
        let mut entry_problem = |msg: String| {
            problems.push(error(
                path,
                "bad_manifest",
                format!("personas[{id:?}]: {msg}"),
            ));
        };
        let Value::Object(fields) = entry else {
            entry_problem("must be an object {name, sample_ids}".into());
            recorded.insert(id.clone(), None);
            continue;
        };
        if !fields.get("name").is_some_and(Value::is_string) {
            entry_problem("\"name\" must be a string".into());
        }
        let n_ids = match fields.get("sample_ids") {
            Some(Value::Array(ids)) if ids.iter().all(Value::is_string) => Some(ids.len() as u64),
            _ => {
                entry_problem("\"sample_ids\" must be a list of strings".into());
                None
            }
        };
        match fields.get("n_samples") {
            None => {}
            Some(v) if v.as_u64().is_some() => {
                if let (Some(n), Some(k)) = (v.as_u64(), n_ids) {
                    if n != k {
                        entry_problem(format!("n_samples={n} but {k} sample_ids"));
                    }
                }
            }
            Some(v) => entry_problem(format!("\"n_samples\" must be an integer, got {v}")),
        }
        if let Some(v) = fields.get("n_tokens") {
            if !(v.is_null() || v.as_u64().is_some()) {
                entry_problem(format!("\"n_tokens\" must be an integer or null, got {v}"));
            }
        }
        if let Some(v) = fields.get("created_at") {
            if !v.is_string() {
                entry_problem(format!("\"created_at\" must be a string, got {v}"));
            }
        }
        let sha256 = match fields.get("sha256") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(v) => {
                entry_problem(format!("\"sha256\" must be 64 hex digits, got {v}"));
                None
            }
        };
        recorded.insert(id.clone(), sha256);
    }
    Some(ManifestView {
        shape: num_layers.zip(hidden_size),
        personas: recorded,
    })
}

/// Every problem of one tensor file.
fn check_file(task: &FileTask, root: &Path, deep: bool) -> Vec<Problem> {
    let path = &task.path;
    let mut out = Vec::new();
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            out.push(error(path, "unreadable", format!("cannot stat: {e}")));
            return out;
        }
    };
    if link.file_type().is_symlink() {
        match fs::canonicalize(path) {
            Ok(target) if !target.starts_with(root) => {
                out.push(error(
                    path,
                    "symlink_outside_tree",
                    format!(
                        "symlink points outside the tree (to {}); not read",
                        target.display()
                    ),
                ));
                return out;
            }
            Ok(_) => {}
            Err(e) => {
                out.push(error(
                    path,
                    "broken_symlink",
                    format!("broken symlink ({e})"),
                ));
                return out;
            }
        }
    }
    // Opening a FIFO or device could block or read forever: only regular files are read.
    match fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            out.push(error(
                path,
                "not_a_file",
                "not a regular file (folder, FIFO or device)",
            ));
            return out;
        }
        Err(e) => {
            out.push(error(path, "unreadable", format!("cannot stat: {e}")));
            return out;
        }
    }
    let header = match read_header(path) {
        Ok(h) => h,
        Err(e) => {
            out.push(error(path, "bad_header", strip_path(&e.to_string(), path)));
            return out;
        }
    };
    let Some(info) = header.tensor(TENSOR_KEY) else {
        let names: Vec<&String> = header.tensors.keys().take(5).collect();
        let more = if header.tensors.len() > 5 {
            ", ..."
        } else {
            ""
        };
        out.push(error(
            path,
            "missing_activations",
            format!("no \"activations\" tensor (has {names:?}{more}); not a persona vector file"),
        ));
        return out;
    };
    for name in header.tensors.keys().filter(|n| n.as_str() != TENSOR_KEY) {
        out.push(warning(
            path,
            "extra_tensor",
            format!("extra tensor {name:?} is ignored"),
        ));
    }
    let Some(dtype) = Dtype::parse(&info.dtype) else {
        out.push(error(
            path,
            "wrong_dtype",
            format!(
                "\"activations\" has dtype {}; expected F32, BF16 or F16",
                info.dtype
            ),
        ));
        return out;
    };
    let (expected_shape, sha256) = match &task.expect {
        Expect::Vector { shape, sha256 } => (*shape, sha256.as_deref()),
        Expect::Samples { shape } => (*shape, None),
    };
    let shape_ok = check_shape(
        path,
        &task.expect,
        &header,
        &info.shape,
        expected_shape,
        &mut out,
    );
    if deep {
        if let Some(want) = sha256 {
            match sha256_file(path) {
                Ok(got) if got == want => {}
                Ok(got) => out.push(error(
                    path,
                    "sha256_mismatch",
                    format!("sha256 {got} differs from the manifest's {want}; the file changed after it was saved"),
                )),
                Err(e) => out.push(error(path, "unreadable", e.to_string())),
            }
        }
        if shape_ok {
            if let Some(p) = scan_non_finite(path, info.begin, info.len(), dtype, &info.shape) {
                out.push(p);
            }
        }
    }
    out
}

fn check_shape(
    path: &Path,
    expect: &Expect,
    header: &Header,
    shape: &[u64],
    expected: Option<(u64, u64)>,
    out: &mut Vec<Problem>,
) -> bool {
    let (layers_hidden, what) = match (expect, shape) {
        (Expect::Vector { .. }, [l, h]) => ((*l, *h), None),
        (Expect::Samples { .. }, [n, l, h]) => ((*l, *h), Some(*n)),
        (Expect::Vector { .. }, _) => {
            out.push(error(
                path,
                "wrong_shape",
                format!("\"activations\" has shape {shape:?}; expected (num_layers, hidden_size)"),
            ));
            return false;
        }
        (Expect::Samples { .. }, _) => {
            out.push(error(path, "wrong_shape", format!("\"activations\" has shape {shape:?}; expected (n_samples, num_layers, hidden_size)")));
            return false;
        }
    };
    let mut ok = true;
    if let Some(want) = expected {
        if layers_hidden != want {
            out.push(error(
                path,
                "shape_mismatch",
                format!(
                    "\"activations\" is ({}, {}) (layers, hidden) but manifest.json says ({}, {})",
                    layers_hidden.0, layers_hidden.1, want.0, want.1
                ),
            ));
            ok = false;
        }
    }
    if let Some(n) = what {
        let ids: Option<Vec<Value>> = header
            .metadata
            .get("sample_ids")
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .and_then(|v| v.as_array().cloned());
        match ids {
            Some(ids) if ids.len() as u64 == n && ids.iter().all(Value::is_string) => {}
            Some(ids) => out.push(error(
                path,
                "bad_samples",
                format!(
                    "{n} sample vectors but {} sample ids in the metadata",
                    ids.len()
                ),
            )),
            None => out.push(error(
                path,
                "bad_samples",
                "metadata lacks a JSON list \"sample_ids\"",
            )),
        }
    }
    ok
}

/// Stream the tensor bytes and report NaN/Inf (count and first row).
fn scan_non_finite(
    path: &Path,
    begin: u64,
    len: u64,
    dtype: Dtype,
    shape: &[u64],
) -> Option<Problem> {
    let read = || -> std::io::Result<(u64, Option<u64>)> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(begin))?;
        let mut reader = file.take(len);
        let size = dtype.size();
        let mut bytes = vec![0u8; SCAN_CHUNK];
        let mut values = vec![0f32; SCAN_CHUNK / size];
        let (mut bad, mut first, mut index) = (0u64, None, 0u64);
        let mut pending = 0usize;
        loop {
            let n = reader.read(&mut bytes[pending..])?;
            if n == 0 {
                break;
            }
            let filled = pending + n;
            let whole = filled - filled % size;
            let count = whole / size;
            decode_into(dtype, &bytes[..whole], &mut values[..count]);
            for (i, v) in values[..count].iter().enumerate() {
                if !v.is_finite() {
                    bad += 1;
                    first.get_or_insert(index + i as u64);
                }
            }
            index += count as u64;
            bytes.copy_within(whole..filled, 0);
            pending = filled - whole;
        }
        Ok((bad, first))
    };
    match read() {
        Ok((0, _)) => None,
        Ok((bad, first)) => {
            // shape is (layers, hidden) or (samples, layers, hidden), checked by the caller.
            let (hidden, layers) = (shape[shape.len() - 1].max(1), shape[shape.len() - 2].max(1));
            let i = first.unwrap_or(0);
            let at = if shape.len() == 3 {
                format!(
                    "sample {}, layer {}",
                    i / (layers * hidden),
                    (i / hidden) % layers
                )
            } else {
                format!("layer {}", i / hidden)
            };
            Some(error(
                path,
                "non_finite",
                format!("{bad} NaN/Inf value(s), the first at {at}; re-extract (float16 overflows: try bfloat16)"),
            ))
        }
        Err(e) => Some(error(
            path,
            "unreadable",
            format!("reading tensor data: {e}"),
        )),
    }
}

/// Errors from `crate::header` start with the path; the report already has it.
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    let message = message.strip_prefix(&prefix).unwrap_or(message);
    message
        .split("; re-extract or delete")
        .next()
        .unwrap_or(message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::tests::build;

    fn vector_file(dir: &Path, id: &str, shape: &[u64]) -> Vec<u8> {
        let bytes = build(&[(TENSOR_KEY, "F32", shape)], &[]);
        fs::write(dir.join(format!("{id}{TENSOR_SUFFIX}")), &bytes).unwrap();
        bytes
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
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
    fn link_outside(dir: &Path) -> tempfile::TempDir {
        let outside = tempfile::tempdir().unwrap();
        vector_file(outside.path(), "c", &[2, 3]);
        std::os::unix::fs::symlink(
            outside.path().join("c.safetensors"),
            dir.join("c.safetensors"),
        )
        .unwrap();
        outside
    }

    fn kinds(report: &Report) -> Vec<&'static str> {
        report.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_clean_tree_passes() {
        let (tmp, dir) = tree();
        let report = validate(tmp.path(), true).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            (report.variant_dirs, report.personas, report.files_checked),
            (1, 2, 2)
        );
        assert!(validate(&dir, false).unwrap().is_clean());
    }

    #[test]
    fn reports_every_problem() {
        let (tmp, dir) = tree();
        fs::remove_file(dir.join("a.safetensors")).unwrap();
        vector_file(&dir, "b", &[2, 4]); // wrong shape, and its sha256 changes
        vector_file(&dir, "orphan", &[2, 3]);
        fs::write(dir.join(".x.safetensors.abc.tmp"), b"partial").unwrap();
        let report = validate(tmp.path(), true).unwrap();
        let k = kinds(&report);
        for want in [
            "missing_tensor",
            "shape_mismatch",
            "sha256_mismatch",
            "orphan_tensor",
            "stale_temp_file",
        ] {
            assert!(k.contains(&want), "{want} not in {k:?}");
        }
        assert!(!report.is_clean());
    }

    #[test]
    fn hostile_files_are_reported_not_fatal() {
        let (tmp, dir) = tree();
        fs::write(dir.join("a.safetensors"), u64::MAX.to_le_bytes()).unwrap();
        fs::write(
            dir.join("b.safetensors"),
            build(&[(TENSOR_KEY, "I32", &[2, 3])], &[]),
        )
        .unwrap();
        let manifest = fs::read_to_string(dir.join(MANIFEST_FILENAME)).unwrap();
        let manifest = manifest.replace("\"a\":", "\"../evil\":\"x\",\"a\":");
        fs::write(dir.join(MANIFEST_FILENAME), manifest).unwrap();
        let _outside = link_outside(&dir);
        let report = validate(tmp.path(), false).unwrap();
        let k = kinds(&report);
        for want in [
            "bad_header",
            "wrong_dtype",
            "unsafe_persona_id",
            "orphan_tensor",
            "symlink_outside_tree",
        ] {
            assert!(k.contains(&want), "{want} not in {k:?}");
        }
    }

    #[test]
    fn odd_names_and_linked_only_folders_are_reported() {
        use std::os::unix::ffi::OsStrExt;
        let (tmp, dir) = tree();
        let odd = std::ffi::OsStr::from_bytes(b"\xffodd.safetensors");
        fs::write(dir.join(odd), b"x").unwrap();
        let k = kinds(&validate(tmp.path(), false).unwrap());
        assert!(k.contains(&"non_utf8_name"), "{k:?}");
        // A variant folder whose only tensor is a link out of the tree is still checked.
        let linked = dir.with_file_name("biography"); // beside the tree's templated folder
        fs::create_dir_all(&linked).unwrap();
        let _outside = link_outside(&linked);
        let report = validate(tmp.path(), false).unwrap();
        assert_eq!(report.variant_dirs, 2);
        assert!(kinds(&report).contains(&"symlink_outside_tree"));
    }

    #[test]
    fn deep_scan_finds_non_finite_values() {
        let (tmp, dir) = tree();
        let mut bytes = fs::read(dir.join("a.safetensors")).unwrap();
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        fs::write(dir.join("a.safetensors"), bytes).unwrap();
        assert!(validate(tmp.path(), false).unwrap().problems.is_empty());
        let report = validate(tmp.path(), true).unwrap();
        let nan = report
            .problems
            .iter()
            .find(|p| p.kind == "non_finite")
            .unwrap();
        assert!(
            nan.message.contains("1 NaN/Inf") && nan.message.contains("layer 1"),
            "{}",
            nan.message
        );
    }

    #[test]
    fn a_moved_variant_folder_is_a_warning() {
        let (tmp, dir) = tree();
        let moved = tmp
            .path()
            .join("org__m")
            .join("answer_mean")
            .join("biography");
        fs::rename(&dir, &moved).unwrap();
        let report = validate(&moved, false).unwrap();
        assert!(report.is_clean());
        assert_eq!(kinds(&report), vec!["misplaced_manifest"]);
    }

    #[test]
    fn persona_id_rules() {
        for good in ["a", "日本語", "🏴‍☠️ x", "a.b"] {
            assert_eq!(persona_id_problem(good), None);
        }
        for bad in ["", "a/b", "a\\b", "..", "x..y", "a\u{7}", "a\u{85}"] {
            assert!(persona_id_problem(bad).is_some(), "{bad:?}");
        }
        assert!(persona_id_problem(&"x".repeat(201)).is_some());
        assert!(persona_id_problem(&"x".repeat(200)).is_none());
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(validate(Path::new("/nonexistent/pvrs"), false).is_err());
    }
}
