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
    m.add_function(wrap_pyfunction!(package_store, m)?)?;
    Ok(())
}
