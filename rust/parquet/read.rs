//! Reading the store: manifests (persona rows in deterministic order) and persona
//! vectors, checked for safe names, bounds, dtype, shape and finiteness.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::{MANIFEST, TENSOR_NAME};
use crate::aggregate::{decode_into, Dtype};
use crate::error::{Error, Result};
use crate::header::{open_regular, parse_header, MAX_HEADER_BYTES};

#[derive(Deserialize)]
struct ManifestPersona {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    sample_ids: PackedStrings,
}

/// A list of strings in one buffer: a persona's sample ids cost their bytes plus four, not a
/// `String` each, so the rows of a large store stay about the size of its manifest file.
#[derive(Default)]
pub(super) struct PackedStrings {
    text: String,
    ends: Vec<u32>,
}

impl PackedStrings {
    pub(super) fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| &self.text[a as usize..b as usize])
    }
}

impl<'de> Deserialize<'de> for PackedStrings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PackedStrings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<PackedStrings, A::Error> {
                let mut packed = PackedStrings::default();
                while let Some(s) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    packed.text.push_str(&s);
                    let end = u32::try_from(packed.text.len())
                        .map_err(|_| serde::de::Error::custom("sample ids exceed 4 GiB"))?;
                    packed.ends.push(end);
                }
                packed.text.shrink_to_fit();
                packed.ends.shrink_to_fit();
                Ok(packed)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

#[derive(Deserialize)]
pub(super) struct Manifest {
    pub(super) num_layers: usize,
    pub(super) hidden_size: usize,
    #[serde(default)]
    personas: BTreeMap<String, ManifestPersona>,
    /// Where the weights came from when the model id does not say (the built-in model's GGUF).
    #[serde(default)]
    pub(super) model_source: Option<serde_json::Value>,
}

/// A persona row before its tensor is read.
pub(super) struct Row {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) sample_ids: PackedStrings,
}

/// Rejects names that could escape their folder (the store's persona-id rules).
pub(super) fn check_component(what: &str, name: &str, origin: &Path) -> Result<()> {
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
pub(super) fn check_split_name(name: &str, origin: &Path) -> Result<()> {
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

pub(super) fn read_manifest(dir: &Path) -> Result<(Manifest, Vec<Row>)> {
    let path = dir.join(MANIFEST);
    let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let mut manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
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
    // Moved into the rows, not copied: they are the only per-persona memory held.
    let personas = std::mem::take(&mut manifest.personas);
    let mut rows = Vec::with_capacity(personas.len());
    // BTreeMap iteration: byte order of persona ids, the deterministic row order.
    for (id, p) in personas {
        check_component("persona id", &id, &path)?;
        rows.push(Row {
            name: p.name.unwrap_or_else(|| id.clone()),
            id,
            sample_ids: p.sample_ids,
        });
    }
    Ok((manifest, rows))
}

/// Reads `<dir>/<id>.safetensors` into `dst` (length `num_layers * hidden_size`) as f32,
/// checking the header bounds, dtype, shape and finiteness.
pub(super) fn read_vector(
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

#[cfg(test)]
mod tests {
    use super::super::test_util::{f32_bytes, tree, write_st};
    use super::*;
    use crate::parquet::{package, PackageOptions};

    #[test]
    fn sample_ids_are_packed_in_one_buffer_in_order() {
        let p: ManifestPersona =
            serde_json::from_str(r#"{"sample_ids": ["q1", "", "ü✨", "q1"]}"#).unwrap();
        assert_eq!(
            p.sample_ids.iter().collect::<Vec<_>>(),
            ["q1", "", "ü✨", "q1"]
        );
        assert_eq!(p.sample_ids.text, "q1ü✨q1");
        let none: ManifestPersona = serde_json::from_str("{}").unwrap();
        assert_eq!(none.sample_ids.iter().count(), 0);
        assert!(serde_json::from_str::<ManifestPersona>(r#"{"sample_ids": [1]}"#).is_err());
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
}
