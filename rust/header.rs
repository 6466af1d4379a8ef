//! Bounds-checked safetensors header parsing.
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`), then
//! the data, whose offsets are relative to the end of the header. Every number read from
//! the file is checked before it is used: the header length against the file size and a
//! 100 MB cap (so a hostile length never allocates or hangs), offsets against the data
//! size, `dtype x shape` against the byte range, and tensors must tile the data exactly
//! (no overlap, no gap, no trailing bytes), as the `safetensors` package requires.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Same cap as the `safetensors` package.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor's entry; `begin`/`end` are absolute byte offsets in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The JSON length `n` from the first 8 bytes; data starts at `8 + n`.
    pub header_len: u64,
    pub file_len: u64,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
}

/// Bytes per element of a safetensors dtype (None for unknown or sub-byte dtypes).
pub fn element_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// The header length prefix, checked against the file length. `Err` is the reason.
pub fn header_len(prefix: &[u8], file_len: u64) -> std::result::Result<u64, String> {
    if file_len < 8 || prefix.len() < 8 {
        return Err(format!(
            "truncated: {file_len} bytes, shorter than the 8-byte header length"
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&prefix[..8]);
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (corrupt, or not a safetensors file)"
        ));
    }
    if n > file_len - 8 {
        return Err(format!(
            "truncated: the header declares {n} bytes but only {} follow the length prefix",
            file_len - 8
        ));
    }
    Ok(n)
}

/// Parse a header from the file's first `8 + n` bytes (`bytes` may hold more).
/// `Err` is a one-line reason without the path.
pub fn parse_header(bytes: &[u8], file_len: u64) -> std::result::Result<Header, String> {
    let n = header_len(bytes, file_len)?;
    let end =
        usize::try_from(8 + n).map_err(|_| "header too large for this platform".to_string())?;
    let json = bytes
        .get(8..end)
        .ok_or_else(|| "truncated header".to_string())?;
    let text = std::str::from_utf8(json).map_err(|e| format!("header is not UTF-8 ({e})"))?;
    if !text.starts_with('{') {
        return Err("header is not a JSON object".to_string());
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("header is not valid JSON ({e})"))?;
    let Value::Object(entries) = value else {
        return Err("header is not a JSON object".to_string());
    };
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            let Value::Object(map) = entry else {
                return Err("__metadata__ is not a JSON object".to_string());
            };
            for (key, value) in map {
                let Value::String(value) = value else {
                    return Err(format!("__metadata__[{key:?}] is not a string"));
                };
                metadata.insert(key, value);
            }
            continue;
        }
        let info = parse_tensor(&name, &entry)?;
        if info.1 > data_len {
            return Err(format!(
                "truncated: tensor {name:?} ends at data offset {} but the file holds {data_len} data bytes",
                info.1
            ));
        }
        tensors.insert(
            name,
            TensorInfo {
                dtype: info.2,
                shape: info.3,
                begin: data_start + info.0,
                end: data_start + info.1,
            },
        );
    }
    check_tiling(&tensors, data_start, file_len)?;
    Ok(Header {
        header_len: n,
        file_len,
        tensors,
        metadata,
    })
}

/// (begin, end, dtype, shape) of one entry, with dtype x shape checked against the range.
fn parse_tensor(
    name: &str,
    entry: &Value,
) -> std::result::Result<(u64, u64, String, Vec<u64>), String> {
    let Value::Object(fields) = entry else {
        return Err(format!("tensor {name:?}: entry is not a JSON object"));
    };
    let dtype = match fields.get("dtype") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(format!("tensor {name:?}: missing or non-string \"dtype\"")),
    };
    let shape = match fields.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| format!("tensor {name:?}: \"shape\" must be non-negative integers"))?,
        _ => return Err(format!("tensor {name:?}: missing or non-array \"shape\"")),
    };
    let offsets = match fields.get("data_offsets") {
        Some(Value::Array(pair)) if pair.len() == 2 => pair
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| {
                format!("tensor {name:?}: \"data_offsets\" must be non-negative integers")
            })?,
        _ => {
            return Err(format!(
                "tensor {name:?}: missing \"data_offsets\" [begin, end]"
            ))
        }
    };
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end {
        return Err(format!(
            "tensor {name:?}: data_offsets [{begin}, {end}] run backwards"
        ));
    }
    let size =
        element_size(&dtype).ok_or_else(|| format!("tensor {name:?}: unknown dtype {dtype:?}"))?;
    let nbytes = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} overflows"))?;
    if nbytes != end - begin {
        return Err(format!(
            "tensor {name:?}: {dtype} {shape:?} needs {nbytes} bytes but data_offsets span {}",
            end - begin
        ));
    }
    Ok((begin, end, dtype, shape))
}

/// Tensors must cover the data exactly once, in some order, from offset 0 to the end.
fn check_tiling(
    tensors: &BTreeMap<String, TensorInfo>,
    data_start: u64,
    file_len: u64,
) -> std::result::Result<(), String> {
    let mut spans: Vec<(&str, u64, u64)> = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), t.begin, t.end))
        .collect();
    spans.sort_by_key(|&(_, begin, end)| (begin, end));
    let mut cursor = data_start;
    let mut previous = "";
    for (name, begin, end) in spans {
        if begin < cursor {
            return Err(format!("tensors {previous:?} and {name:?} overlap"));
        }
        if begin > cursor {
            return Err(format!(
                "gap of {} bytes before tensor {name:?}",
                begin - cursor
            ));
        }
        cursor = end;
        previous = name;
    }
    if cursor != file_len {
        return Err(format!(
            "{} trailing bytes after the last tensor",
            file_len - cursor
        ));
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file (symlinks followed). Anything else is an
/// artifact error before it is opened: a FIFO would block forever (with the GIL released, so
/// Ctrl-C cannot stop it) and a device such as `/dev/zero` never ends.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(artifact(path, "not a regular file"));
    }
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Opens `path` read-only for a caller that has checked it is a regular file, then checks
/// what it opened with `File::metadata`: `O_NONBLOCK` keeps a FIFO swapped in since the check
/// from blocking the open (regular files ignore the flag) and, with `nofollow`, a symlink
/// swapped in fails to open instead of being followed.
pub fn open_checked_regular(path: &Path, nofollow: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let follow = if nofollow { libc::O_NOFOLLOW } else { 0 };
        options.custom_flags(libc::O_NONBLOCK | follow);
    }
    #[cfg(not(unix))]
    let _ = nofollow;
    options.open(path)
}

/// The first read of a header: one page holds a pvrs vector file's header.
pub const HEADER_PROBE: usize = 4096;

/// Why [`read_prefix`] found no header.
#[derive(Debug)]
pub enum PrefixError {
    Io(std::io::Error),
    /// The bytes are not a valid header: a one-line reason without the path.
    Invalid(String),
}

impl PrefixError {
    /// The reason in one line, without the path.
    pub fn reason(&self) -> String {
        match self {
            PrefixError::Io(e) => e.to_string(),
            PrefixError::Invalid(reason) => reason.clone(),
        }
    }

    pub fn at(self, path: &Path) -> Error {
        match self {
            PrefixError::Io(e) => Error::io(path, e),
            PrefixError::Invalid(reason) => artifact(path, &reason),
        }
    }
}

/// Reads the start of `file` (`file_len` bytes long, read from its start) into `buf` and
/// parses the header. The first read asks for `first` bytes, so a small header takes one
/// read and a caller going on to the data keeps the bytes read past the header; `buf` grows
/// only as far as a longer header needs (bounded by the checked header length). Returns the
/// header and how many bytes of `buf` hold the file's start (at least `8 + n`).
pub fn read_prefix(
    file: &mut File,
    file_len: u64,
    buf: &mut Vec<u8>,
    first: usize,
) -> std::result::Result<(Header, usize), PrefixError> {
    read_prefix_at(file, file_len, buf, 0, first)
}

/// `read_prefix` with the file's first byte at `buf[at]` (a caller may choose where the
/// kernel's copy lands); the count returned is of the bytes from `at` on.
pub fn read_prefix_at(
    file: &mut File,
    file_len: u64,
    buf: &mut Vec<u8>,
    at: usize,
    first: usize,
) -> std::result::Result<(Header, usize), PrefixError> {
    let want = usize::try_from(file_len).map_or(first, |len| len.min(first));
    if buf.len() < at + want {
        buf.resize(at + want, 0);
    }
    let mut filled = read_up_to(file, &mut buf[at..at + want]).map_err(PrefixError::Io)?;
    let n = header_len(&buf[at..at + filled], file_len).map_err(PrefixError::Invalid)?;
    // n <= MAX_HEADER_BYTES and n <= file_len - 8, so this size is bounded.
    let end = usize::try_from(8 + n)
        .map_err(|_| PrefixError::Invalid("header too large for this platform".into()))?;
    if end > filled {
        if buf.len() < at + end {
            buf.resize(at + end, 0);
        }
        filled += read_up_to(file, &mut buf[at + filled..at + end]).map_err(PrefixError::Io)?;
        if filled < end {
            return Err(PrefixError::Invalid(
                "truncated while reading the header".into(),
            ));
        }
    }
    let header = parse_header(&buf[at..at + filled], file_len).map_err(PrefixError::Invalid)?;
    Ok((header, filled))
}

/// Read and parse the header of `path` (a page or the header's length, not the data).
pub fn read_header(path: &Path) -> Result<Header> {
    let mut file = open_regular(path)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_prefix(&mut file, file_len, &mut Vec::new(), HEADER_PROBE)
        .map(|(header, _)| header)
        .map_err(|e| e.at(path))
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
pub fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An `Error::Artifact` naming the file, the reason and the next step.
pub fn artifact(path: &Path, reason: &str) -> Error {
    Error::Artifact(format!(
        "{}: {reason}; re-extract or delete this file (`pvrs validate` checks a whole tree)",
        path.display()
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid safetensors file with the given (name, dtype, shape) tensors and metadata.
    pub fn build(tensors: &[(&str, &str, &[u64])], metadata: &[(&str, &str)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        let mut data = Vec::new();
        for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
            let n = element_size(dtype).unwrap() * shape.iter().product::<u64>();
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            data.extend((0..n).map(|k| (k as u8).wrapping_mul(7).wrapping_add(i as u8)));
            offset += n;
        }
        if !metadata.is_empty() {
            let map: serde_json::Map<String, Value> = metadata
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            header.insert("__metadata__".into(), Value::Object(map));
        }
        let mut json = serde_json::to_vec(&Value::Object(header)).unwrap();
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend(data);
        out
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
        parse_header(bytes, bytes.len() as u64)
    }

    #[test]
    fn parses_a_valid_file() {
        let bytes = build(
            &[("activations", "F32", &[3, 4]), ("b", "BF16", &[2])],
            &[("k", "v")],
        );
        let h = parse(&bytes).unwrap();
        let t = h.tensor("activations").unwrap();
        assert_eq!(t.shape, vec![3, 4]);
        assert_eq!(t.len(), 48);
        assert_eq!(t.begin, h.data_start());
        assert_eq!(h.metadata["k"], "v");
        assert_eq!(h.tensors["b"].begin, h.data_start() + 48);
    }

    #[test]
    fn rejects_hostile_files() {
        let good = build(&[("activations", "F32", &[3, 4])], &[]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "shorter than the 8-byte"),
            (u64::MAX.to_le_bytes().to_vec(), "exceeds"),
            (
                [&(1000u64).to_le_bytes()[..], b"{}"].concat(),
                "truncated: the header declares 1000",
            ),
            (good[..good.len() - 1].to_vec(), "truncated: tensor"),
            ([&good[..], &[0u8]].concat(), "trailing bytes"),
        ];
        for (bytes, want) in cases {
            let err = parse(&bytes).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    fn with_header(json: &str, data_len: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json.as_bytes());
        out.extend(vec![0u8; data_len]);
        out
    }

    #[test]
    fn rejects_bad_entries() {
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "gap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "needs 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "unknown dtype",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}"#,
                8,
                "non-negative",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "backwards",
            ),
            (r#"{"__metadata__":{"k":1}}"#, 0, "not a string"),
            (r#"[1]"#, 0, "not a JSON object"),
            (r#"{"a":"#, 0, "not valid JSON"),
        ];
        for (json, data_len, want) in cases {
            let err = parse(&with_header(json, data_len)).unwrap_err();
            assert!(err.contains(want), "{json}: {err} should mention {want}");
        }
    }

    #[test]
    fn read_header_reads_files_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, build(&[("activations", "F16", &[2, 2])], &[])).unwrap();
        assert_eq!(
            read_header(&path).unwrap().tensors["activations"].dtype,
            "F16"
        );
        std::fs::write(&path, [9u8; 5]).unwrap();
        let err = read_header(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("truncated"),
            "{err}"
        );
    }
}
