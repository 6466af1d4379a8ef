//! The only file that knows PyO3: converts arguments, releases the GIL around
//! heavy work, catches panics and maps `crate::Error` onto `pvrs.errors` classes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

use crate::error::Error;
use crate::hashing;
use crate::parquet;
use crate::spans;
use numpy::{
    PyArray1, PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};

/// Raise the `pvrs.errors` class that matches `err`, with its message.
fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    let class = py
        .import("pvrs.errors")
        .and_then(|module| module.getattr(err.python_class()))
        .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// Run `work` without the GIL; a panic becomes `pvrs.InternalError`, never an abort
/// or a `PanicException` crossing into Python.
fn run_detached<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> crate::Result<T> + Send,
{
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
    match outcome {
        Ok(result) => result.map_err(|e| to_py_err(py, e)),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(to_py_err(
                py,
                Error::Internal(format!(
                    "internal error in pvrs._core (please report it): {what}"
                )),
            ))
        }
    }
}

/// Streamed sha256 (hex) of a file.
#[pyfunction]
fn sha256_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    run_detached(py, move || hashing::sha256_file(&path))
}

/// Version, build profile and features of the native module.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = PyDict::new(py);
    info.set_item("version", env!("CARGO_PKG_VERSION"))?;
    info.set_item(
        "profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    info.set_item("features", vec!["python", "abi3-py310"])?;
    info.set_item("rayon_threads", rayon::current_num_threads())?;
    Ok(info)
}

/// Test hook: panics inside Rust so tests can check the panic is contained.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>) -> PyResult<()> {
    run_detached(py, || -> crate::Result<()> {
        panic!("deliberate panic for the FFI containment test")
    })
}

// ---- store: safetensors headers, aggregation, validation ----

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn};
use pyo3::types::PyList;

use crate::{aggregate, header, manifest};

fn to_array<'py>(
    py: Python<'py>,
    data: Vec<f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let array = ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| to_py_err(py, Error::Internal(format!("output shape: {e}"))))?;
    Ok(array.into_pyarray(py))
}

/// Parsed, bounds-checked header of a safetensors file (offsets relative to the data, as
/// in the file); raises `pvrs.ArtifactError` naming the file when it is malformed.
#[pyfunction]
fn read_safetensors_header(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let parsed = run_detached(py, move || header::read_header(&path))?;
    let out = PyDict::new(py);
    out.set_item("header_len", parsed.header_len)?;
    out.set_item("metadata", parsed.metadata.clone())?;
    let tensors = PyDict::new(py);
    for (name, info) in &parsed.tensors {
        let entry = PyDict::new(py);
        entry.set_item("dtype", &info.dtype)?;
        entry.set_item("shape", info.shape.clone())?;
        let base = parsed.data_start();
        entry.set_item("data_offsets", (info.begin - base, info.end - base))?;
        tensors.set_item(name, entry)?;
    }
    out.set_item("tensors", tensors)?;
    Ok(out)
}

/// Element-wise `op` ("sum", "mean", "var") over the files' 2-D `tensor`, float64
/// accumulation, optional layer subset; returns float32 `(n_layers, hidden)`.
#[pyfunction]
#[pyo3(signature = (paths, op="mean", layers=None, tensor="activations", ddof=0))]
fn aggregate_files<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    op: &str,
    layers: Option<Vec<usize>>,
    tensor: &str,
    ddof: u32,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let reduction = aggregate::Reduction::parse(op, ddof).map_err(|e| to_py_err(py, e))?;
    let tensor = tensor.to_string();
    let (data, shape) = run_detached(py, move || {
        aggregate::reduce(&paths, &tensor, layers.as_deref(), reduction)
    })?;
    to_array(py, data, &shape)
}

/// Stack the files' 2-D `tensor` (optionally only `layers`) into float32 `(n_files, n_layers, hidden)`.
#[pyfunction]
#[pyo3(signature = (paths, layers=None, tensor="activations"))]
fn stack_files<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    layers: Option<Vec<usize>>,
    tensor: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let tensor = tensor.to_string();
    let (data, shape) = run_detached(py, move || {
        aggregate::stack(&paths, &tensor, layers.as_deref())
    })?;
    to_array(py, data, &shape)
}

/// Check an artifacts tree or variant folder; returns the report as a dict
/// (`root`, `deep`, `variant_dirs`, `personas`, `files_checked`, `problems`: list of
/// {path, severity, kind, message}).
#[pyfunction]
#[pyo3(signature = (path, deep=false))]
fn validate_tree(py: Python<'_>, path: PathBuf, deep: bool) -> PyResult<Bound<'_, PyDict>> {
    let report = run_detached(py, move || manifest::validate(&path, deep))?;
    let out = PyDict::new(py);
    out.set_item("root", &report.root)?;
    out.set_item("deep", report.deep)?;
    out.set_item("variant_dirs", report.variant_dirs)?;
    out.set_item("personas", report.personas)?;
    out.set_item("files_checked", report.files_checked)?;
    out.set_item("problems", problem_list(py, &report.problems)?)?;
    Ok(out)
}

/// The problems `validate` finds in the manifest bytes `raw` read from `path`, as
/// `validate_tree` lists them: the one manifest check every reader applies.
#[pyfunction]
fn manifest_problems<'py>(
    py: Python<'py>,
    raw: &[u8],
    path: PathBuf,
) -> PyResult<Bound<'py, PyList>> {
    problem_list(py, &manifest::manifest_problems(raw, &path))
}

fn problem_list<'py>(py: Python<'py>, found: &[manifest::Problem]) -> PyResult<Bound<'py, PyList>> {
    let problems = PyList::empty(py);
    for p in found {
        let item = PyDict::new(py);
        item.set_item("path", &p.path)?;
        item.set_item(
            "severity",
            match p.severity {
                manifest::Severity::Error => "error",
                manifest::Severity::Warning => "warning",
            },
        )?;
        item.set_item("kind", p.kind)?;
        item.set_item("message", &p.message)?;
        problems.append(item)?;
    }
    Ok(problems)
}

/// Why `persona_id` is not a safe file name, or None when it is.
#[pyfunction]
fn persona_id_problem(persona_id: &str) -> Option<String> {
    manifest::persona_id_problem(persona_id)
}

// ---- spans ----

/// A C-contiguous numpy array as a slice, or `InvalidArgumentError` naming the argument.
fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    array: &'a numpy::PyReadonlyArray<'_, T, D>,
    what: &str,
) -> crate::Result<&'a [T]> {
    array.as_slice().map_err(|_| {
        Error::InvalidArgument(format!(
            "{what} must be a C-contiguous numpy array (use np.ascontiguousarray)"
        ))
    })
}

/// Rows `[sys_start, sys_end, q_start, q_end, a_start, a_end]` (system `-1, -1` when
/// absent) plus text lengths, as `SampleSpans`.
fn sample_spans(rows: &[i64], text_lens: &[i64]) -> crate::Result<Vec<spans::SampleSpans>> {
    if rows.len() != 6 * text_lens.len() {
        return Err(Error::InvalidArgument(format!(
            "spans must be an (n_samples, 6) array matching {} text lengths",
            text_lens.len()
        )));
    }
    let value = |v: i64| {
        u64::try_from(v).map_err(|_| {
            Error::InvalidArgument(format!(
                "negative character offset {v} in spans or text_lens"
            ))
        })
    };
    let span = |a: i64, b: i64| Ok::<_, Error>(spans::CharSpan::new(value(a)?, value(b)?));
    rows.chunks_exact(6)
        .zip(text_lens)
        .map(|(r, &len)| {
            Ok(spans::SampleSpans {
                system: if r[0] < 0 && r[1] < 0 {
                    None
                } else {
                    Some(span(r[0], r[1])?)
                },
                question: span(r[2], r[3])?,
                answer: span(r[4], r[5])?,
                text_len: value(len)?,
            })
        })
        .collect()
}

type MaskOutput<'py> = (
    Bound<'py, PyArray2<bool>>,
    Bound<'py, PyArray3<i64>>,
    Bound<'py, PyArray1<i64>>,
);

/// Token spans and the masks of the requested strategies for a ragged batch
/// (see `rust/spans/mod.rs` for the exact rules). GIL released; rayon across samples.
#[pyfunction]
#[pyo3(signature = (offsets, lengths, spans, text_lens, strategies, *, special=None, sample_ids=None, template="chat template"))]
#[allow(clippy::too_many_arguments)]
fn build_token_masks<'py>(
    py: Python<'py>,
    offsets: &Bound<'py, PyAny>,
    lengths: PyReadonlyArray1<'py, i64>,
    spans: PyReadonlyArray2<'py, i64>,
    text_lens: PyReadonlyArray1<'py, i64>,
    strategies: Vec<String>,
    special: Option<PyReadonlyArray1<'py, bool>>,
    sample_ids: Option<Vec<String>>,
    template: &str,
) -> PyResult<MaskOutput<'py>> {
    enum Offsets<'py> {
        U32(PyReadonlyArray2<'py, u32>),
        I64(PyReadonlyArray2<'py, i64>),
    }
    enum OffsetSlice<'a> {
        U32(&'a [u32]),
        I64(&'a [i64]),
    }
    let offsets = if let Ok(a) = offsets.extract::<PyReadonlyArray2<'py, u32>>() {
        Offsets::U32(a)
    } else if let Ok(a) = offsets.extract::<PyReadonlyArray2<'py, i64>>() {
        Offsets::I64(a)
    } else {
        return Err(to_py_err(
            py,
            Error::InvalidArgument(
                "offsets must be an (n_total_tokens, 2) uint32 or int64 numpy array".into(),
            ),
        ));
    };
    let err = |e: Error| to_py_err(py, e);
    let (offsets, width) = match &offsets {
        Offsets::U32(a) => (
            OffsetSlice::U32(contiguous(a, "offsets").map_err(err)?),
            a.shape()[1],
        ),
        Offsets::I64(a) => (
            OffsetSlice::I64(contiguous(a, "offsets").map_err(err)?),
            a.shape()[1],
        ),
    };
    let lengths = contiguous(&lengths, "lengths").map_err(err)?;
    let spans = contiguous(&spans, "spans").map_err(err)?;
    let text_lens = contiguous(&text_lens, "text_lens").map_err(err)?;
    let special = special
        .as_ref()
        .map(|a| contiguous(a, "special"))
        .transpose()
        .map_err(err)?;
    let sample_ids = sample_ids.unwrap_or_default();
    let template = template.to_string();
    if width != 2 {
        return Err(err(Error::InvalidArgument(format!(
            "offsets must have 2 columns (start, end), got {width}"
        ))));
    }
    let strategies = strategies
        .iter()
        .map(|name| spans::Strategy::parse(name))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(err)?;
    let n_total = match offsets {
        OffsetSlice::U32(o) => o.len() / 2,
        OffsetSlice::I64(o) => o.len() / 2,
    };
    // The masks are written straight into a fresh numpy buffer (every element, on success).
    // SAFETY: the array is uninitialised until build_masks_into returns Ok; it reaches Python
    // only then, and on an error it is dropped unread.
    let masks = unsafe { PyArray2::<bool>::new(py, [strategies.len(), n_total], false) };
    let out = unsafe {
        std::slice::from_raw_parts_mut(
            masks.data().cast::<std::mem::MaybeUninit<bool>>(),
            strategies.len() * n_total,
        )
    };
    let tokens = run_detached(py, || {
        let lengths: Vec<usize> = lengths
            .iter()
            .map(|&n| {
                usize::try_from(n)
                    .map_err(|_| Error::InvalidArgument(format!("negative sample length {n}")))
            })
            .collect::<crate::Result<_>>()?;
        let spans = sample_spans(spans, text_lens)?;
        // One struct literal for both offset dtypes (the batch is generic over them).
        macro_rules! build {
            ($offsets:expr) => {
                spans::build_masks_into(
                    &spans::Batch {
                        offsets: $offsets,
                        lengths: &lengths,
                        spans: &spans,
                        special,
                        sample_ids: &sample_ids,
                        template: &template,
                    },
                    &strategies,
                    out,
                )
            };
        }
        match offsets {
            OffsetSlice::U32(o) => build!(o),
            OffsetSlice::I64(o) => build!(o),
        }
    })?;
    let absent = |s: Option<spans::TokenSpan>| match s {
        Some(s) => [s.first as i64, s.end as i64],
        None => [-1, -1],
    };
    let mut token_spans = Vec::with_capacity(tokens.len() * 6);
    let mut special_index = Vec::with_capacity(tokens.len());
    for t in &tokens {
        token_spans.extend(absent(t.system));
        token_spans.extend(absent(t.question));
        token_spans.extend(absent(Some(t.answer)));
        special_index.push(t.question_special.map_or(-1, |i| i as i64));
    }
    let n_samples = tokens.len();
    let token_spans = PyArray1::from_vec(py, token_spans).reshape([n_samples, 3, 2])?;
    Ok((masks, token_spans, PyArray1::from_vec(py, special_index)))
}

// ---- hub packaging ----

/// Package a local activation store into the Hub dataset layout (see `rust/parquet.rs`).
/// `progress(advance, total)` is called after each row group with the GIL held; an
/// exception it raises (e.g. KeyboardInterrupt) aborts packaging and is re-raised.
#[pyfunction]
#[pyo3(signature = (root, out, model_dirs=None, mask_strategies=None, row_group_bytes=parquet::DEFAULT_ROW_GROUP_BYTES, file_bytes=parquet::DEFAULT_FILE_BYTES, progress=None))]
#[allow(clippy::too_many_arguments)]
fn package_store(
    py: Python<'_>,
    root: PathBuf,
    out: PathBuf,
    model_dirs: Option<Vec<String>>,
    mask_strategies: Option<Vec<String>>,
    row_group_bytes: u64,
    file_bytes: u64,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let raised: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let opts = parquet::PackageOptions {
        row_group_bytes,
        file_bytes,
    };
    let result = run_detached(py, || {
        let sources = parquet::discover(&root, model_dirs.as_deref(), mask_strategies.as_deref())?;
        let total = parquet::count_rows(&sources)?;
        let mut report = |advance: usize| -> crate::Result<()> {
            let Some(callback) = &progress else {
                return Ok(());
            };
            Python::attach(|py| callback.call1(py, (advance, total)).map(|_| ())).map_err(|err| {
                let message = err.to_string();
                if let Ok(mut slot) = raised.lock() {
                    *slot = Some(err);
                }
                Error::Internal(format!(
                    "packaging aborted by the progress callback: {message}"
                ))
            })
        };
        parquet::package(&sources, &out, &opts, &mut report)
    });
    if let Some(err) = raised.into_inner().ok().flatten() {
        return Err(err);
    }
    result?
        .into_iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("config", r.config)?;
            d.set_item("split", r.split)?;
            d.set_item("files", r.files)?;
            d.set_item("num_rows", r.num_rows)?;
            d.set_item("num_layers", r.num_layers)?;
            d.set_item("hidden_size", r.hidden_size)?;
            d.set_item("num_bytes", r.num_bytes)?;
            d.set_item("written_bytes", r.written_bytes)?;
            Ok(d)
        })
        .collect()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    // ---- store ----
    m.add_function(wrap_pyfunction!(read_safetensors_header, m)?)?;
    m.add_function(wrap_pyfunction!(aggregate_files, m)?)?;
    m.add_function(wrap_pyfunction!(stack_files, m)?)?;
    m.add_function(wrap_pyfunction!(validate_tree, m)?)?;
    m.add_function(wrap_pyfunction!(persona_id_problem, m)?)?;
    m.add_function(wrap_pyfunction!(manifest_problems, m)?)?;
    // spans
    m.add_function(wrap_pyfunction!(build_token_masks, m)?)?;
    // hub packaging
    m.add_function(wrap_pyfunction!(package_store, m)?)?;
    Ok(())
}
