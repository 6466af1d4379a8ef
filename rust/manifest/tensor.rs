//! The checks of one tensor file: symlinks and non-regular files, the bounds-checked
//! header, dtype and shape against the manifest, and (deep) sha256 and a NaN/Inf scan.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::report::{error, warning, Problem};
use super::TENSOR_KEY;
use sha2::{Digest, Sha256};

use crate::aggregate::Dtype;
use crate::hashing::{to_hex, CHUNK};
use crate::header::{read_header, Header};

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
        let scan = shape_ok.then_some((info.begin, info.len(), dtype));
        match hash_and_scan(path, sha256.is_some(), scan) {
            Ok(pass) => {
                if let (Some(want), Some(got)) = (sha256, pass.sha256) {
                    if got != want {
                        out.push(error(
                            path,
                            "sha256_mismatch",
                            format!("sha256 {got} differs from the manifest's {want}; the file changed after it was saved"),
                        ));
                    }
                }
                if pass.non_finite > 0 {
                    out.push(non_finite(
                        path,
                        &info.shape,
                        pass.non_finite,
                        pass.first_non_finite,
                    ));
                }
            }
            Err(e) => out.push(error(path, "unreadable", format!("reading the file: {e}"))),
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

/// What one deep pass over a file found.
struct DeepPass {
    sha256: Option<String>,
    non_finite: u64,
    first_non_finite: Option<u64>,
}

/// One read of the file: every chunk feeds the sha256 (when `hash`) and, inside the tensor's
/// byte range `scan` = (begin, len, dtype), the NaN/Inf scan, so each byte is read once.
fn hash_and_scan(
    path: &Path,
    hash: bool,
    scan: Option<(u64, u64, Dtype)>,
) -> std::io::Result<DeepPass> {
    let mut file = File::open(path)?;
    let mut hasher = hash.then(Sha256::new);
    let (begin, len, dtype) = scan.unwrap_or((0, 0, Dtype::F32));
    if hasher.is_none() {
        file.seek(SeekFrom::Start(begin))?;
    }
    // Segments: the bytes before the tensor (hashed only), the tensor (hashed and scanned),
    // the rest (hashed only). Without a hash only the tensor is read.
    let segments = [
        (if hasher.is_some() { begin } else { 0 }, false),
        (len, true),
        (if hasher.is_some() { u64::MAX } else { 0 }, false),
    ];
    let mut buf = vec![0u8; CHUNK];
    let mut pass = DeepPass {
        sha256: None,
        non_finite: 0,
        first_non_finite: None,
    };
    let mut index = 0u64;
    for (mut remaining, scanned) in segments {
        while remaining > 0 {
            // CHUNK is a multiple of every element size, so only the last chunk can split one.
            let want = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
            let n = fill(&mut file, &mut buf[..want])?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            if scanned {
                let (bad, first) = count_non_finite(dtype, &buf[..n]);
                pass.non_finite += bad;
                if let (None, Some(i)) = (pass.first_non_finite, first) {
                    pass.first_non_finite = Some(index + i);
                }
                index += (n / dtype.size()) as u64;
            }
            remaining -= n as u64;
            if n < want {
                break; // end of file
            }
        }
    }
    pass.sha256 = hasher.map(|h| to_hex(&h.finalize()));
    Ok(pass)
}

/// Read until `buf` is full or the file ends; the number of bytes read.
fn fill(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// NaN/Inf among the little-endian values in `bytes`: (count, index of the first). An
/// all-ones exponent is NaN or Inf in every float format, so no value is decoded.
fn count_non_finite(dtype: Dtype, bytes: &[u8]) -> (u64, Option<u64>) {
    fn count<const N: usize>(bytes: &[u8], is_bad: impl Fn([u8; N]) -> bool) -> (u64, Option<u64>) {
        let bad = |c: &[u8]| is_bad(c.try_into().expect("chunks_exact"));
        // The branch-free count vectorises; the position is looked up only when needed.
        let total = bytes.chunks_exact(N).filter(|c| bad(c)).count() as u64;
        let first = (total > 0)
            .then(|| bytes.chunks_exact(N).position(bad).map(|i| i as u64))
            .flatten();
        (total, first)
    }
    match dtype {
        Dtype::F32 => count::<4>(bytes, |c| {
            u32::from_le_bytes(c) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::BF16 => count::<2>(bytes, |c| u16::from_le_bytes(c) & 0x7f80 == 0x7f80),
        Dtype::F16 => count::<2>(bytes, |c| u16::from_le_bytes(c) & 0x7c00 == 0x7c00),
    }
}

/// The report of `bad` NaN/Inf values, naming where the first one is.
fn non_finite(path: &Path, shape: &[u64], bad: u64, first: Option<u64>) -> Problem {
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
    error(
        path,
        "non_finite",
        format!("{bad} NaN/Inf value(s), the first at {at}; re-extract (float16 overflows: try bfloat16)"),
    )
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

    #[test]
    fn exponent_test_agrees_with_decoding_every_half_pattern() {
        for dtype in [Dtype::BF16, Dtype::F16] {
            let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
            let mut values = vec![0f32; 1 << 16];
            crate::aggregate::decode_into(dtype, &bytes, &mut values);
            let want = values.iter().filter(|v| !v.is_finite()).count() as u64;
            let first = values.iter().position(|v| !v.is_finite()).map(|i| i as u64);
            assert_eq!(count_non_finite(dtype, &bytes), (want, first), "{dtype:?}");
        }
        let specials = [
            1.0f32,
            f32::INFINITY,
            -0.0,
            f32::NAN,
            f32::MAX,
            f32::NEG_INFINITY,
        ];
        let bytes: Vec<u8> = specials.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_non_finite(Dtype::F32, &bytes), (3, Some(1)));
    }

    #[test]
    fn one_pass_hashes_the_whole_file_and_scans_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        // A tensor spanning several read chunks, after a 100-byte "header", with a trailer.
        let values = CHUNK; // floats: 4 chunks of bytes
        let mut data = vec![7u8; 100];
        for i in 0..values {
            let v = if i == values - 1 || i == CHUNK / 4 + 3 {
                f32::NAN
            } else {
                i as f32
            };
            data.extend(v.to_le_bytes());
        }
        data.extend(b"trailer");
        fs::write(&path, &data).unwrap();
        let scan = Some((100, (values * 4) as u64, Dtype::F32));
        let pass = hash_and_scan(&path, true, scan).unwrap();
        assert_eq!(
            pass.sha256.as_deref(),
            Some(crate::hashing::sha256_bytes(&data).as_str())
        );
        assert_eq!(
            (pass.non_finite, pass.first_non_finite),
            (2, Some((CHUNK / 4 + 3) as u64))
        );
        let pass = hash_and_scan(&path, false, scan).unwrap();
        assert_eq!((pass.sha256, pass.non_finite), (None, 2));
    }
}
