//! The only file that knows PyO3: converts arguments, releases the GIL around
//! heavy work, catches panics and maps `crate::Error` onto `pvrs.errors` classes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

use crate::error::Error;
use crate::hashing;

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
    let problems = PyList::empty(py);
    for p in &report.problems {
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
    out.set_item("problems", problems)?;
    Ok(out)
}

/// Why `persona_id` is not a safe file name, or None when it is.
#[pyfunction]
fn persona_id_problem(persona_id: &str) -> Option<String> {
    manifest::persona_id_problem(persona_id)
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
    Ok(())
}
