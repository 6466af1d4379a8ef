//! The checks of one tensor file: symlinks and non-regular files, the bounds-checked
//! header, dtype and shape against the manifest, and (deep) sha256 and a NaN/Inf scan.
//!
//! One open per file: the folder listing's entry type says whether it is a symlink or a
//! regular file (no stat), the header comes from the first read, and a deep check goes on
//! from there, hashing and scanning each byte once, in a buffer reused across files.

use std::fs::{self, File, FileType};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::report::{error, warning, Problem};
use super::TENSOR_KEY;
use sha2::{Digest, Sha256};

use crate::aggregate::Dtype;
use crate::hashing::{sha256_bytes, sha256_pair, to_hex, CHUNK};
use crate::header::{open_checked_regular, read_prefix, read_up_to, Header, HEADER_PROBE};

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
    /// The entry type from the folder listing (None: unknown, so `lstat` it).
    pub(super) kind: Option<FileType>,
}

/// Every problem of one or two tensor files, read into `bufs` (one per file, reused across
/// calls). A deep check of two files that each came whole with the first read hashes both
/// at once (`sha256_pair`), which costs little more than hashing one.
pub(super) fn check_files(
    tasks: &[FileTask],
    root: &Path,
    deep: bool,
    bufs: &mut [Vec<u8>; 2],
) -> Vec<Problem> {
    let mut out = Vec::new();
    // Deep checks of files read whole, by the buffer that holds them.
    let mut whole = Vec::new();
    for (i, (task, buf)) in tasks.iter().zip(bufs.iter_mut()).enumerate() {
        let (mut file, file_len) = match open_tensor(task, root) {
            Ok(opened) => opened,
            Err(problem) => {
                out.push(problem);
                continue;
            }
        };
        let Some(left) = check_open_file(task, &mut file, file_len, deep, buf, &mut out) else {
            continue;
        };
        if left.prefix as u64 == file_len {
            whole.push((i, left));
        } else {
            let hash = left.sha256.is_some();
            let pass = hash_and_scan(&mut file, buf, left.prefix, file_len, hash, left.scan);
            report_deep(&task.path, &left, pass, &mut out);
        }
    }
    let bytes = |(i, left): &(usize, DeepCheck)| &bufs[*i][..left.prefix];
    let digests: Vec<Option<String>> = match whole.as_slice() {
        [a, b] if a.1.sha256.is_some() && b.1.sha256.is_some() => sha256_pair(bytes(a), bytes(b))
            .iter()
            .map(|d| Some(to_hex(d)))
            .collect(),
        held => held
            .iter()
            .map(|h| h.1.sha256.is_some().then(|| sha256_bytes(bytes(h))))
            .collect(),
    };
    for (held, sha256) in whole.iter().zip(digests) {
        let mut pass = DeepPass {
            sha256,
            ..DeepPass::default()
        };
        pass.scan(&held.1.scan.unwrap_or(NO_SPAN), 0, bytes(held));
        report_deep(&tasks[held.0].path, &held.1, Ok(pass), &mut out);
    }
    // A hostile header may have grown a buffer to 100 MB: do not keep that per thread.
    for buf in bufs.iter_mut().filter(|buf| buf.len() > CHUNK) {
        buf.truncate(CHUNK);
        buf.shrink_to_fit();
    }
    out
}

/// Opens a tensor file after the safety checks, with its length: symlinks are reported, not
/// followed, and only regular files are opened (a FIFO would block, a device never
/// ends), checked again on the opened file in case the entry changed since the listing.
fn open_tensor(task: &FileTask, root: &Path) -> Result<(File, u64), Problem> {
    let path = &task.path;
    let cannot_stat = |e: std::io::Error| error(path, "unreadable", format!("cannot stat: {e}"));
    let not_a_file = || {
        error(
            path,
            "not_a_file",
            "not a regular file (folder, FIFO or device)",
        )
    };
    let kind = match task.kind {
        Some(kind) => kind,
        None => fs::symlink_metadata(path).map_err(cannot_stat)?.file_type(),
    };
    if kind.is_symlink() {
        match fs::canonicalize(path) {
            Ok(target) if !target.starts_with(root) => {
                return Err(error(
                    path,
                    "symlink_outside_tree",
                    format!(
                        "symlink points outside the tree (to {}); not read",
                        target.display()
                    ),
                ));
            }
            // Readers would take the target's vector (another persona's) for this one.
            Ok(target) => {
                return Err(error(
                    path,
                    "symlinked_file",
                    format!(
                        "a symbolic link (to {}), not a file pvrs wrote; not read. Replace it \
                         with a copy or re-extract this persona",
                        target.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(error(
                    path,
                    "broken_symlink",
                    format!("broken symlink ({e})"),
                ))
            }
        }
    } else if !kind.is_file() {
        return Err(not_a_file());
    }
    let file = open_checked_regular(path, true)
        .map_err(|e| error(path, "unreadable", format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(cannot_stat)?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    Ok((file, meta.len()))
}

/// What a deep check still has to do once the header checks have passed.
struct DeepCheck<'a> {
    /// The manifest's sha256 of the file, if it records one.
    sha256: Option<&'a str>,
    /// The tensor's bytes, when its shape is right (else there is nothing to scan).
    scan: Option<Span>,
    shape: Vec<u64>,
    /// Bytes of the file already in the buffer.
    prefix: usize,
}

/// The checks of an opened tensor file (header, dtype, shape); with `deep`, what is left to
/// do (the sha256 and the NaN/Inf scan), unless the header failed.
fn check_open_file<'a>(
    task: &'a FileTask,
    file: &mut File,
    file_len: u64,
    deep: bool,
    buf: &mut Vec<u8>,
    out: &mut Vec<Problem>,
) -> Option<DeepCheck<'a>> {
    let path = &task.path;
    // A deep check reads the whole file anyway: its first chunk brings the header.
    let first = if deep { CHUNK } else { HEADER_PROBE };
    let (header, prefix) = match read_prefix(file, file_len, buf, first) {
        Ok(read) => read,
        Err(e) => {
            out.push(error(path, "bad_header", e.reason()));
            return None;
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
        return None;
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
        return None;
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
        out,
    );
    deep.then(|| DeepCheck {
        sha256,
        scan: shape_ok.then_some(Span {
            begin: info.begin,
            end: info.end,
            dtype,
        }),
        shape: info.shape.clone(),
        prefix,
    })
}

/// The problems a deep pass found (or the read error that stopped it).
fn report_deep(
    path: &Path,
    check: &DeepCheck,
    pass: std::io::Result<DeepPass>,
    out: &mut Vec<Problem>,
) {
    match pass {
        Ok(pass) => {
            if let (Some(want), Some(got)) = (check.sha256, pass.sha256) {
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
                    &check.shape,
                    pass.non_finite,
                    pass.first_non_finite,
                ));
            }
        }
        Err(e) => out.push(error(path, "unreadable", format!("reading the file: {e}"))),
    }
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

/// The tensor's bytes `[begin, end)` in the file, which the NaN/Inf scan reads.
#[derive(Clone, Copy, Debug)]
struct Span {
    begin: u64,
    end: u64,
    dtype: Dtype,
}

/// What one deep pass over a file found.
#[derive(Default)]
struct DeepPass {
    sha256: Option<String>,
    non_finite: u64,
    first_non_finite: Option<u64>,
}

/// No bytes to scan.
const NO_SPAN: Span = Span {
    begin: 0,
    end: 0,
    dtype: Dtype::F32,
};

impl DeepPass {
    /// Scan the part of `bytes` (the file's bytes from `pos`) inside `span` for NaN/Inf.
    fn scan(&mut self, span: &Span, pos: u64, bytes: &[u8]) {
        let (from, to) = (
            pos.max(span.begin),
            (pos + bytes.len() as u64).min(span.end),
        );
        if from < to {
            let values = &bytes[(from - pos) as usize..(to - pos) as usize];
            let (bad, first) = count_non_finite(span.dtype, values);
            self.non_finite += bad;
            if let (None, Some(i)) = (self.first_non_finite, first) {
                let size = span.dtype.size() as u64;
                self.first_non_finite = Some((from - span.begin) / size + i);
            }
        }
    }
}

/// The rest of the one read of a file whose first `prefix` bytes are in `buf`: every byte
/// feeds the sha256 (when `hash`) and, inside `scan`, the NaN/Inf scan, so each byte is
/// read once. Without a hash only the tensor's bytes are read.
fn hash_and_scan(
    file: &mut File,
    buf: &mut Vec<u8>,
    mut prefix: usize,
    file_len: u64,
    hash: bool,
    scan: Option<Span>,
) -> std::io::Result<DeepPass> {
    let span = scan.unwrap_or(NO_SPAN);
    let size = span.dtype.size() as u64;
    // Complete an element the prefix splits; later reads end on element boundaries.
    let at = prefix as u64;
    if at > span.begin && at < span.end && (at - span.begin) % size != 0 {
        let extra = (size - (at - span.begin) % size) as usize;
        if buf.len() < prefix + extra {
            buf.resize(prefix + extra, 0);
        }
        prefix += read_up_to(file, &mut buf[prefix..prefix + extra])?;
    }
    let mut hasher = hash.then(Sha256::new);
    let mut pass = DeepPass::default();
    let mut feed = |pos: u64, bytes: &[u8]| {
        if let Some(h) = hasher.as_mut() {
            h.update(bytes);
        }
        pass.scan(&span, pos, bytes);
    };
    feed(0, &buf[..prefix]);
    let mut pos = prefix as u64;
    let stop = if hash { file_len } else { span.end };
    if !hash && pos < span.begin {
        pos = file.seek(SeekFrom::Start(span.begin))?;
    }
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    while pos < stop {
        let mut want = usize::try_from(stop - pos).map_or(CHUNK, |r| r.min(CHUNK));
        // End every read on an element boundary of the tensor, so none splits an element.
        let end = pos + want as u64;
        if end > span.begin && end < span.end {
            want -= ((end - span.begin) % size) as usize;
        }
        let n = read_up_to(file, &mut buf[..want])?;
        feed(pos, &buf[..n]);
        pos += n as u64;
        if n < want {
            break; // end of file
        }
    }
    pass.sha256 = hasher.map(|h| to_hex(&h.finalize()));
    Ok(pass)
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
    fn fifos_are_never_opened_even_through_a_link() {
        let (tmp, dir) = tree();
        for name in ["f.safetensors", "inside.fifo"] {
            let path = std::ffi::CString::new(dir.join(name).to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        }
        std::os::unix::fs::symlink(dir.join("inside.fifo"), dir.join("g.safetensors")).unwrap();
        // Opening either would block forever: the FIFO is a file of no kind, the link a link.
        let report = validate(tmp.path(), true).unwrap();
        let found = |kind: &str| -> Vec<&str> {
            report
                .problems
                .iter()
                .filter(|p| p.kind == kind)
                .map(|p| p.path.as_str())
                .collect()
        };
        let fifos = found("not_a_file");
        assert!(
            fifos.len() == 1 && fifos[0].ends_with("f.safetensors"),
            "{:?}",
            report.problems
        );
        let links = found("symlinked_file");
        assert!(
            links.len() == 1 && links[0].ends_with("g.safetensors"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_link_to_another_persona_is_an_error() {
        let (tmp, dir) = tree();
        fs::remove_file(dir.join("b.safetensors")).unwrap();
        std::os::unix::fs::symlink("a.safetensors", dir.join("b.safetensors")).unwrap();
        let report = validate(tmp.path(), false).unwrap();
        assert_eq!(kinds(&report), vec!["symlinked_file"]);
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
    fn files_hashed_two_at_a_time_keep_their_own_problems() {
        // Seven files, so pairs and one alone; f is too long for the first read (streamed).
        // A changed byte and a NaN are reported on their own files whichever pairs form.
        let (tmp, dir) = tree();
        let mut personas = serde_json::Map::new();
        let long = [CHUNK as u64 + 100];
        for id in ["a", "b", "c", "d", "e", "f", "g"] {
            let mut tensors = vec![(TENSOR_KEY, "F32", &[2u64, 3][..])];
            if id == "f" {
                tensors.push(("other", "U8", &long[..]));
            }
            let mut bytes = build(&tensors, &[]);
            let n = bytes.len();
            if id == "d" {
                bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            personas.insert(
                id.into(),
                serde_json::json!({"name": id, "sample_ids": ["q"], "n_samples": 1,
                                   "sha256": crate::hashing::sha256_bytes(&bytes)}),
            );
            if id == "c" || id == "f" {
                bytes[n - 1] ^= 1; // changed after the manifest recorded its hash
            }
            fs::write(dir.join(format!("{id}.safetensors")), &bytes).unwrap();
        }
        let manifest = serde_json::json!({"num_layers": 2, "hidden_size": 3, "personas": personas,
                                          "variant": "templated", "mask_strategy": "answer_mean"});
        fs::write(dir.join(MANIFEST_FILENAME), manifest.to_string()).unwrap();
        let report = validate(tmp.path(), true).unwrap();
        let mut found: Vec<(String, &str)> = report
            .problems
            .iter()
            .map(|p| (p.path.rsplit('/').next().unwrap().to_string(), p.kind))
            .collect();
        found.sort();
        let want = [
            ("c.safetensors", "sha256_mismatch"),
            ("d.safetensors", "non_finite"),
            ("f.safetensors", "extra_tensor"),
            ("f.safetensors", "sha256_mismatch"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(p, k)| (p.to_string(), *k)).collect();
        assert_eq!(found, want);
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
        let values = CHUNK; // floats: 4 chunks of bytes
        for first_nan in [0, CHUNK / 4 + 3] {
            // A tensor spanning several read chunks, after a 100-byte "header", with a trailer.
            let mut data = vec![7u8; 100];
            for i in 0..values {
                let nan = i == first_nan || i == CHUNK / 4 + 3 || i == values - 1;
                data.extend((if nan { f32::NAN } else { i as f32 }).to_le_bytes());
            }
            data.extend(b"trailer");
            fs::write(&path, &data).unwrap();
            let scan = Some(Span {
                begin: 100,
                end: 100 + (values * 4) as u64,
                dtype: Dtype::F32,
            });
            let bad = if first_nan == 0 { 3 } else { 2 };
            // Prefixes ending before the tensor, inside it mid-element and on an element
            // boundary all give the same pass, with or without the hash.
            for prefix in [10, 103, 110, 116] {
                for hash in [true, false] {
                    let mut file = File::open(&path).unwrap();
                    let mut buf = vec![0u8; prefix];
                    assert_eq!(read_up_to(&mut file, &mut buf).unwrap(), prefix);
                    let len = data.len() as u64;
                    let pass = hash_and_scan(&mut file, &mut buf, prefix, len, hash, scan).unwrap();
                    let want = hash.then(|| crate::hashing::sha256_bytes(&data));
                    assert_eq!(pass.sha256, want, "{prefix}");
                    assert_eq!(
                        (pass.non_finite, pass.first_non_finite),
                        (bad, Some(first_nan as u64)),
                        "{prefix} {hash}"
                    );
                }
            }
        }
    }
}
