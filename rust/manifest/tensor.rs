//! The checks of one tensor file: symlinks and non-regular files, the bounds-checked
//! header, dtype and shape against the manifest, and (deep) sha256 and a NaN/Inf scan.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::report::{error, warning, Problem};
use super::TENSOR_KEY;
use crate::aggregate::{decode_into, Dtype};
use crate::hashing::sha256_file;
use crate::header::{read_header, Header};

const SCAN_CHUNK: usize = 1 << 20;

/// What a tensor file must hold.
#[derive(Clone, Debug)]
pub(super) enum Expect {
    /// A persona vector `(num_layers, hidden_size)` (None where the manifest lacks them).
    Vector {
        shape: Option<(u64, u64)>,
        sha256: Option<String>,
    },
    /// Per-sample vectors `(n, num_layers, hidden_size)` with `n` ids in the metadata.
    Samples { shape: Option<(u64, u64)> },
}

#[derive(Clone, Debug)]
pub(super) struct FileTask {
    pub(super) path: PathBuf,
    pub(super) expect: Expect,
}

/// Every problem of one tensor file.
pub(super) fn check_file(task: &FileTask, root: &Path, deep: bool) -> Vec<Problem> {
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
    // Readers upcast half precision exactly, so it is usable (persona-vectors 0.6.x saved
    // bf16), but pvrs writes F32 only: say so here, not only through a deep scan.
    if info.dtype != "F32" {
        out.push(warning(
            path,
            "half_precision",
            format!(
                "\"activations\" is {}; readers upcast it to float32, pvrs writes F32 (re-extract for full precision)",
                info.dtype
            ),
        ));
    }
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
    use super::super::test_util::{kinds, link_outside, tree};
    use super::*;
    use crate::header::tests::build;
    use crate::manifest::{validate, MANIFEST_FILENAME};

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
    fn half_precision_is_a_shallow_warning() {
        let (tmp, dir) = tree();
        fs::write(
            dir.join("a.safetensors"),
            build(&[(TENSOR_KEY, "F16", &[2, 3])], &[]),
        )
        .unwrap();
        let report = validate(tmp.path(), false).unwrap();
        assert_eq!(kinds(&report), vec!["half_precision"]);
        assert!(report.is_clean() && report.problems[0].message.contains("F16"));
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
}
