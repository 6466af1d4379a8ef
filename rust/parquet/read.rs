//! Reading the store: manifests (persona rows in deterministic order) and persona
//! vectors, checked for safe names, bounds, dtype, shape and finiteness.

use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{MANIFEST, TENSOR_NAME};
use crate::aggregate::{decode_into, Dtype};
use crate::error::{Error, Result};
use crate::header::{
    header_len, open_checked_regular, open_regular, parse_header, MAX_HEADER_BYTES,
};

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
    /// Appends `s`; false, appending nothing, past 4 GiB of text.
    fn push(&mut self, s: &str) -> bool {
        let Ok(end) = u32::try_from(self.text.len() + s.len()) else {
            return false;
        };
        self.text.push_str(s);
        self.ends.push(end);
        true
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

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
                    if !packed.push(&s) {
                        return Err(serde::de::Error::custom("sample ids exceed 4 GiB"));
                    }
                }
                packed.text.shrink_to_fit();
                packed.ends.shrink_to_fit();
                Ok(packed)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

/// The manifest's fields besides its personas.
pub(super) struct Manifest {
    pub(super) num_layers: usize,
    pub(super) hidden_size: usize,
    /// Where the weights came from when the model id does not say (the built-in model's GGUF).
    pub(super) model_source: Option<serde_json::Value>,
}

/// A persona row before its tensor is read.
pub(super) struct Row {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) sample_ids: PackedStrings,
}

/// What a pass over the manifest keeps of its personas: told each id, it says whether the
/// persona's fields are wanted, and is handed them if so.
trait PersonaSink {
    fn wants(&mut self, id: &str) -> bool;
    fn keep(&mut self, id: String, persona: ManifestPersona);
}

/// Counts the personas (the progress total).
struct Count(usize);

impl PersonaSink for Count {
    fn wants(&mut self, _: &str) -> bool {
        self.0 += 1;
        false
    }
    fn keep(&mut self, _: String, _: ManifestPersona) {}
}

/// Collects the persona ids only, packed; `overflow` if they exceed 4 GiB.
struct Ids {
    ids: PackedStrings,
    overflow: bool,
}

impl PersonaSink for Ids {
    fn wants(&mut self, id: &str) -> bool {
        self.overflow |= !self.ids.push(id);
        false
    }
    fn keep(&mut self, _: String, _: ManifestPersona) {}
}

/// Collects the rows whose ids lie in `first..=last` (byte order).
struct Range<'a> {
    first: &'a str,
    last: &'a str,
    rows: Vec<Row>,
}

impl PersonaSink for Range<'_> {
    fn wants(&mut self, id: &str) -> bool {
        (self.first..=self.last).contains(&id)
    }
    fn keep(&mut self, id: String, p: ManifestPersona) {
        self.rows.push(Row {
            name: p.name.unwrap_or_else(|| id.clone()),
            id,
            sample_ids: p.sample_ids,
        });
    }
}

/// Deserializes a manifest, streaming its `personas` object through a sink.
struct ManifestSeed<'a, S>(&'a mut S);

impl<'de, S: PersonaSink> serde::de::DeserializeSeed<'de> for ManifestSeed<'_, S> {
    type Value = Manifest;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Manifest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: PersonaSink> serde::de::Visitor<'de> for ManifestSeed<'_, S> {
    type Value = Manifest;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an activation manifest object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Manifest, A::Error> {
        use serde::de::{Error as _, IgnoredAny};
        let (mut layers, mut hidden, mut source) = (None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "num_layers" => layers = Some(map.next_value()?),
                "hidden_size" => hidden = Some(map.next_value()?),
                "model_source" => source = map.next_value()?,
                "personas" => map.next_value_seed(PersonasSeed(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Manifest {
            num_layers: layers.ok_or_else(|| A::Error::missing_field("num_layers"))?,
            hidden_size: hidden.ok_or_else(|| A::Error::missing_field("hidden_size"))?,
            model_source: source,
        })
    }
}

struct PersonasSeed<'a, S>(&'a mut S);

impl<'de, S: PersonaSink> serde::de::DeserializeSeed<'de> for PersonasSeed<'_, S> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: PersonaSink> serde::de::Visitor<'de> for PersonasSeed<'_, S> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of personas")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(id) = map.next_key::<String>()? {
            if self.0.wants(&id) {
                let persona = map.next_value()?;
                self.0.keep(id, persona);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// An open manifest, read in passes that each keep only part of its personas, so the
/// memory held grows with the persona ids, not with their names and sample ids. Every pass
/// reads the file opened first (a save replaces the manifest by renaming, and the
/// packager holds the store lock), so all passes see the same personas.
pub(super) struct ManifestFile {
    path: PathBuf,
    file: File,
}

impl ManifestFile {
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        // What is published must be the store's own manifest: as `pvrs validate` and every
        // reader, refuse a link (it could publish any file) or anything but a regular file.
        let not_regular = || {
            Error::Manifest(format!(
                "{}: not a regular file (symlink, folder or device); copy the manifest in and \
                 run `pvrs validate {}`",
                path.display(),
                dir.display()
            ))
        };
        let link = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !link.file_type().is_file() {
            return Err(not_regular());
        }
        let file = open_checked_regular(&path, true).map_err(|e| Error::io(&path, e))?;
        if !file.metadata().map_err(|e| Error::io(&path, e))?.is_file() {
            return Err(not_regular());
        }
        Ok(Self { path, file })
    }

    fn pass<S: PersonaSink>(&self, sink: &mut S) -> Result<Manifest> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 16, file));
        let manifest = serde::de::DeserializeSeed::deserialize(ManifestSeed(sink), &mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| {
                if e.is_io() {
                    return Error::io(&self.path, e.into());
                }
                Error::Manifest(format!(
                    "{}: not a valid activation manifest ({e}); re-run the extraction that wrote it",
                    self.path.display()
                ))
            })?;
        if manifest.num_layers == 0 || manifest.hidden_size == 0 {
            return Err(Error::Manifest(format!(
                "{}: num_layers and hidden_size must be positive (got {} x {})",
                self.path.display(),
                manifest.num_layers,
                manifest.hidden_size
            )));
        }
        Ok(manifest)
    }

    /// The number of personas listed.
    pub(super) fn count(&self) -> Result<usize> {
        let mut count = Count(0);
        self.pass(&mut count)?;
        Ok(count.0)
    }

    /// The manifest and its persona ids in byte order (the deterministic row order), each
    /// checked to be a safe file name and listed once.
    pub(super) fn ids(&self) -> Result<(Manifest, PackedStrings)> {
        let mut ids = Ids {
            ids: PackedStrings::default(),
            overflow: false,
        };
        let manifest = self.pass(&mut ids)?;
        if ids.overflow {
            return Err(Error::Manifest(format!(
                "{}: persona ids exceed 4 GiB",
                self.path.display()
            )));
        }
        let mut sorted: Vec<&str> = ids.ids.iter().collect();
        sorted.sort_unstable();
        let mut packed = PackedStrings::default();
        for (i, id) in sorted.iter().enumerate() {
            check_component("persona id", id, &self.path)?;
            if i > 0 && sorted[i - 1] == *id {
                return Err(Error::Manifest(format!(
                    "{}: persona {id:?} is listed twice; re-run the extraction that wrote it",
                    self.path.display()
                )));
            }
            // Cannot fail: the same ids fitted before.
            packed.push(id);
        }
        Ok((manifest, packed))
    }

    /// The rows of the personas `first..=last` (ids from [`Self::ids`]), in id order;
    /// `expected` of them.
    pub(super) fn rows(&self, first: &str, last: &str, expected: usize) -> Result<Vec<Row>> {
        let mut range = Range {
            first,
            last,
            rows: Vec::with_capacity(expected),
        };
        self.pass(&mut range)?;
        let mut rows = range.rows;
        if rows.len() != expected {
            return Err(Error::Manifest(format!(
                "{}: changed while it was packaged; package again",
                self.path.display()
            )));
        }
        rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }
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
    let mut file = open_regular(&path)?;
    // A vector file is its header plus at most 8 bytes per value: read no more than that.
    let limit = 8 + MAX_HEADER_BYTES + (dims.0 as u64) * (dims.1 as u64) * 8;
    let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    if file_len > limit {
        return Err(corrupt(format!(
            "{file_len} bytes, far more than a ({}, {}) vector",
            dims.0, dims.1
        )));
    }
    let invalid = |why: String| corrupt(format!("not a valid safetensors file ({why})"));
    let read = |file: &mut File, into: &mut [u8]| {
        file.read_exact(into).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid("shorter than it was".to_string()),
            _ => Error::io(&path, e),
        })
    };
    // The header, then the data straight into place: no copy of the whole file.
    buf.resize(8, 0);
    read(&mut file, &mut buf[..8])?;
    let n = header_len(buf, file_len).map_err(invalid)?;
    // n <= MAX_HEADER_BYTES: a bounded allocation.
    buf.resize(8 + n as usize, 0);
    read(&mut file, &mut buf[8..])?;
    // The store's parser bounds-checks the header length, the JSON, every tensor's offsets
    // and their exact tiling of the data, as `pvrs validate` and aggregation do.
    let header = parse_header(buf, file_len).map_err(invalid)?;
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
    if info.begin != 8 + n {
        file.seek(SeekFrom::Start(info.begin))
            .map_err(|e| Error::io(&path, e))?;
    }
    // parse_header checked that the shape and dtype give exactly `end - begin` bytes.
    if dtype == Dtype::F32 && cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid f32, and u8 has no alignment requirement.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 4) };
        read(&mut file, bytes)?;
    } else {
        buf.resize((info.end - info.begin) as usize, 0);
        read(&mut file, buf)?;
        decode_into(dtype, buf, dst);
    }
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
    fn manifest_passes_keep_ids_then_one_range_of_rows() {
        let (_tmp, src) = tree(5);
        let file = ManifestFile::open(&src.dir).unwrap();
        assert_eq!(file.count().unwrap(), 5);
        let (manifest, ids) = file.ids().unwrap();
        assert_eq!((manifest.num_layers, manifest.hidden_size), (2, 3));
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            ["p000", "p001", "p002", "p003", "p004"]
        );
        let rows = file.rows(ids.get(1), ids.get(3), 3).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.sample_ids.iter().collect::<Vec<_>>()))
            .collect();
        assert_eq!(
            got,
            [
                ("p001", vec!["q1", "shared"]),
                ("p002", vec!["q2", "shared"]),
                ("p003", vec!["q3", "shared"])
            ]
        );
        assert_eq!(rows[0].name, "Persona 1 ✨");
        // Rows that no longer match the ids (the manifest changed under the packager).
        let e = file.rows(ids.get(1), ids.get(3), 4).map(drop).unwrap_err();
        assert!(e.to_string().contains("changed while"), "{e}");
    }

    #[test]
    fn a_persona_listed_twice_or_a_bad_manifest_is_a_manifest_error() {
        let (_tmp, src) = tree(1);
        let path = src.dir.join(MANIFEST);
        fs::write(
            &path,
            r#"{"num_layers": 2, "hidden_size": 3, "personas": {"b": {}, "a": {}, "b": {}}}"#,
        )
        .unwrap();
        let e = ManifestFile::open(&src.dir)
            .unwrap()
            .ids()
            .map(drop)
            .unwrap_err();
        assert_eq!(e.python_class(), "ManifestError");
        assert!(e.to_string().contains("\"b\" is listed twice"), "{e}");
        for bad in [
            r#"{"hidden_size": 3, "personas": {}}"#,
            r#"{"num_layers": 0, "hidden_size": 3}"#,
            r#"{"num_layers": 2, "hidden_size": 3, "personas": []}"#,
            r#"{"num_layers": 2, "hidden_size": 3} trailing"#,
        ] {
            fs::write(&path, bad).unwrap();
            let e = ManifestFile::open(&src.dir).unwrap().count().unwrap_err();
            assert_eq!(e.python_class(), "ManifestError", "{bad}: {e}");
        }
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
        // A manifest linked to a file outside the store is never read.
        let manifest = src.dir.join(MANIFEST);
        let outside = out.path().join("elsewhere.json");
        fs::rename(&manifest, &outside).unwrap();
        std::os::unix::fs::symlink(&outside, &manifest).unwrap();
        let err = ManifestFile::open(&src.dir).err().unwrap().to_string();
        assert!(err.contains("not a regular file"), "{err}");
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
    fn reads_the_vector_after_other_tensors() {
        let (_tmp, src) = tree(1);
        let v = [1.5f32, -2.0, 0.25, 3.0, 4.0, -0.5];
        let header = serde_json::json!({
            "a_first": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            TENSOR_NAME: {"dtype": "F32", "shape": [2, 3], "data_offsets": [4, 28]},
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&f32_bytes(&[9.0]));
        bytes.extend_from_slice(&f32_bytes(&v));
        fs::write(src.dir.join("p000.safetensors"), bytes).unwrap();
        let mut dst = vec![0f32; 6];
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
