//! The only file that knows PyO3: converts arguments, releases the GIL around
//! heavy work, catches panics and maps `crate::Error` onto `pvrs.errors` classes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

use crate::error::Error;
use crate::hashing;
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
/// (see `rust/spans.rs` for the exact rules). GIL released; rayon across samples.
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
    let result = run_detached(py, || {
        if width != 2 {
            return Err(Error::InvalidArgument(format!(
                "offsets must have 2 columns (start, end), got {width}"
            )));
        }
        let lengths: Vec<usize> = lengths
            .iter()
            .map(|&n| {
                usize::try_from(n)
                    .map_err(|_| Error::InvalidArgument(format!("negative sample length {n}")))
            })
            .collect::<crate::Result<_>>()?;
        let spans = sample_spans(spans, text_lens)?;
        let strategies = strategies
            .iter()
            .map(|name| spans::Strategy::parse(name))
            .collect::<crate::Result<Vec<_>>>()?;
        // One struct literal for both offset dtypes (the batch is generic over them).
        macro_rules! build {
            ($offsets:expr) => {
                spans::build_masks(
                    &spans::Batch {
                        offsets: $offsets,
                        lengths: &lengths,
                        spans: &spans,
                        special,
                        sample_ids: &sample_ids,
                        template: &template,
                    },
                    &strategies,
                )
            };
        }
        match offsets {
            OffsetSlice::U32(o) => build!(o),
            OffsetSlice::I64(o) => build!(o),
        }
    })?;
    let n_strategies = result.strategies.len();
    let masks = PyArray1::from_vec(py, result.masks).reshape([n_strategies, result.n_total])?;
    let absent = |s: Option<spans::TokenSpan>| match s {
        Some(s) => [s.first as i64, s.end as i64],
        None => [-1, -1],
    };
    let mut token_spans = Vec::with_capacity(result.tokens.len() * 6);
    let mut special_index = Vec::with_capacity(result.tokens.len());
    for t in &result.tokens {
        token_spans.extend(absent(t.system));
        token_spans.extend(absent(t.question));
        token_spans.extend(absent(Some(t.answer)));
        special_index.push(t.question_special.map_or(-1, |i| i as i64));
    }
    let n_samples = result.tokens.len();
    let token_spans = PyArray1::from_vec(py, token_spans).reshape([n_samples, 3, 2])?;
    Ok((masks, token_spans, PyArray1::from_vec(py, special_index)))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    // spans
    m.add_function(wrap_pyfunction!(build_token_masks, m)?)?;
    Ok(())
}
