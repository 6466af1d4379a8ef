//! The manifest model: the persona-id rules and the checked reading of `manifest.json`
//! (JSON shape and field types) into the view the folder check works from.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::report::{error, warning, Problem};
use super::MAX_PERSONA_ID_BYTES;

const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Invisible characters that reorder or hide text (bidi controls such as U+202E, zero-width
/// spaces, the BOM): a file name holding one can show as another persona's. ZWJ and ZWNJ
/// stay allowed (emoji sequences, several scripts). The same list as
/// `pvrs.store.layout.INVISIBLE`.
const INVISIBLE: [(char, char); 9] = [
    ('\u{00AD}', '\u{00AD}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200B}'),
    ('\u{200E}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
];

/// Why a persona id is not a safe file name (None when it is). Mirrors
/// `pvrs.store.validate_persona_id`.
pub fn persona_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".into());
    }
    if id.contains('/') || id.contains('\\') {
        return Some("contains a path separator".into());
    }
    if id == "." || id.contains("..") {
        return Some("is '.' or contains '..'".into());
    }
    if id.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| INVISIBLE.iter().any(|(lo, hi)| (lo..=hi).contains(&c)))
    {
        return Some(format!(
            "contains the invisible character U+{:04X}",
            u32::from(c)
        ));
    }
    if id.trim() != id {
        return Some("starts or ends with whitespace".into());
    }
    if id.len() > MAX_PERSONA_ID_BYTES {
        return Some(format!(
            "is {} bytes long (at most {MAX_PERSONA_ID_BYTES} in UTF-8)",
            id.len()
        ));
    }
    None
}

/// The manifest's recorded personas (checked for shape and types), or None when unusable.
pub(super) struct ManifestView {
    pub(super) shape: Option<(u64, u64)>,
    pub(super) personas: BTreeMap<String, Option<String>>,
}

const PROVENANCE_KEYS: [&str; 12] = [
    "format",
    "model",
    "revision",
    "dtype",
    "mask_strategy",
    "variant",
    "layer_convention",
    "pooling",
    "chat_template_sha256",
    "pvrs_version",
    "engine",
    "engine_version",
];

pub(super) fn read_manifest(
    path: &Path,
    dir: &Path,
    problems: &mut Vec<Problem>,
) -> Option<ManifestView> {
    let bad = |problems: &mut Vec<Problem>, msg: String| {
        problems.push(error(path, "bad_manifest", msg));
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.len() <= MAX_MANIFEST_BYTES => {}
        Ok(m) if m.file_type().is_file() => {
            bad(
                problems,
                format!(
                    "manifest is {} bytes; refusing to read more than 1 GiB",
                    m.len()
                ),
            );
            return None;
        }
        Ok(_) => {
            bad(
                problems,
                "manifest.json is not a regular file (symlink, folder or device)".into(),
            );
            return None;
        }
        Err(e) => {
            bad(problems, format!("cannot read: {e}"));
            return None;
        }
    }
    match fs::read(path) {
        Ok(bytes) => check_manifest(&bytes, path, dir, problems),
        Err(e) => {
            bad(problems, format!("cannot read: {e}"));
            None
        }
    }
}

/// The checks of a manifest's bytes, `path` being where they were read (`dir`, its folder):
/// the one check `validate` and every Python reader apply (`pvrs.store.manifest`).
pub(super) fn check_manifest(
    bytes: &[u8],
    path: &Path,
    dir: &Path,
    problems: &mut Vec<Problem>,
) -> Option<ManifestView> {
    let bad = |problems: &mut Vec<Problem>, msg: String| {
        problems.push(error(path, "bad_manifest", msg));
    };
    // serde_json refuses nesting deeper than 128 levels, so no reader recurses on it.
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            bad(problems, format!("not valid JSON ({e})"));
            return None;
        }
    };
    let Value::Object(top) = value else {
        bad(problems, "manifest is not a JSON object".into());
        return None;
    };
    let positive = |key: &str, problems: &mut Vec<Problem>| -> Option<u64> {
        match top.get(key) {
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => v.as_u64(),
            Some(v) => {
                problems.push(error(
                    path,
                    "bad_manifest",
                    format!("{key:?} must be a positive integer, got {v}"),
                ));
                None
            }
            None => {
                problems.push(error(path, "bad_manifest", format!("missing {key:?}")));
                None
            }
        }
    };
    let num_layers = positive("num_layers", problems);
    let hidden_size = positive("hidden_size", problems);
    for key in PROVENANCE_KEYS {
        if let Some(v) = top.get(key) {
            if !(v.is_string() || v.is_null()) {
                bad(
                    problems,
                    format!("{key:?} must be a string or null, got {v}"),
                );
            }
        }
    }
    if let Some(v) = top.get("format_version") {
        if v.as_u64().is_none() {
            bad(
                problems,
                format!("\"format_version\" must be a non-negative integer, got {v}"),
            );
        }
    }
    // Readers find vectors by folder name, so a manifest filed under another variant or
    // strategy than it records is misleading (a warning: the data itself is intact).
    for (key, folder) in [
        ("variant", dir.file_name()),
        ("mask_strategy", dir.parent().and_then(Path::file_name)),
    ] {
        if let (Some(Value::String(said)), Some(folder)) = (top.get(key), folder) {
            let folder = folder.to_string_lossy();
            if said.as_str() != folder {
                problems.push(warning(
                    path,
                    "misplaced_manifest",
                    format!("records {key}={said:?} but lives in folder {folder:?}; move it back"),
                ));
            }
        }
    }
    model_problem(&top, path, dir, problems);
    let Some(Value::Object(personas)) = top.get("personas") else {
        bad(
            problems,
            "missing \"personas\" object {id: {name, sample_ids}}".into(),
        );
        return None;
    };
    let mut recorded = BTreeMap::new();
    for (id, entry) in personas {
        if let Some(why) = persona_id_problem(id) {
            problems.push(error(
                path,
                "unsafe_persona_id",
                format!("persona id {id:?} {why}; persona ids must be safe file names"),
            ));
            continue;
        }
        let mut entry_problem = |msg: String| {
            problems.push(error(
                path,
                "bad_manifest",
                format!("personas[{id:?}]: {msg}"),
            ));
        };
        let Value::Object(fields) = entry else {
            entry_problem("must be an object {name, sample_ids}".into());
            recorded.insert(id.clone(), None);
            continue;
        };
        if !fields.get("name").is_some_and(Value::is_string) {
            entry_problem("\"name\" must be a string".into());
        }
        let n_ids = match fields.get("sample_ids") {
            Some(Value::Array(ids)) if ids.iter().all(Value::is_string) => Some(ids.len() as u64),
            _ => {
                entry_problem("\"sample_ids\" must be a list of strings".into());
                None
            }
        };
        match fields.get("n_samples") {
            None => {}
            Some(v) if v.as_u64().is_some() => {
                if let (Some(n), Some(k)) = (v.as_u64(), n_ids) {
                    if n != k {
                        entry_problem(format!("n_samples={n} but {k} sample_ids"));
                    }
                }
            }
            Some(v) => entry_problem(format!("\"n_samples\" must be an integer, got {v}")),
        }
        if let Some(v) = fields.get("n_tokens") {
            if !(v.is_null() || v.as_u64().is_some()) {
                entry_problem(format!("\"n_tokens\" must be an integer or null, got {v}"));
            }
        }
        if let Some(v) = fields.get("created_at") {
            if !v.is_string() {
                entry_problem(format!("\"created_at\" must be a string, got {v}"));
            }
        }
        let sha256 = match fields.get("sha256") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(v) => {
                entry_problem(format!("\"sha256\" must be 64 hex digits, got {v}"));
                None
            }
        };
        recorded.insert(id.clone(), sha256);
    }
    Some(ManifestView {
        shape: num_layers.zip(hidden_size),
        personas: recorded,
    })
}

/// Folder name of a model in the tree, as `pvrs.engines.models.model_dir_name` makes it
/// (None: the name cannot name a folder).
fn model_dir_name(model: &str) -> Option<String> {
    let parts: Vec<&str> = model
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") || parts[0].starts_with('.') {
        return None;
    }
    Some(parts.join("__"))
}

/// A `model` that the model folder (two levels above `dir`) does not name: the field was
/// edited or the folder renamed, and readers (which find vectors by folder) would publish
/// and compare the vectors under another model's name.
fn model_problem(
    top: &serde_json::Map<String, Value>,
    path: &Path,
    dir: &Path,
    problems: &mut Vec<Problem>,
) {
    let (Some(Value::String(model)), Some(folder)) = (
        top.get("model"),
        dir.parent()
            .and_then(Path::parent)
            .and_then(Path::file_name),
    ) else {
        return;
    };
    let folder = folder.to_string_lossy();
    if model_dir_name(model).as_deref() != Some(&*folder) {
        problems.push(error(
            path,
            "model_mismatch",
            format!(
                "records model={model:?} but lives in model folder {folder:?}; restore the \
                 manifest's \"model\" (or the folder's name) or re-extract"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{kinds, tree};
    use super::*;
    use crate::manifest::validate;

    #[test]
    fn a_moved_variant_folder_is_a_warning() {
        let (tmp, dir) = tree();
        let moved = tmp
            .path()
            .join("org__m")
            .join("answer_mean")
            .join("biography");
        fs::rename(&dir, &moved).unwrap();
        let report = validate(&moved, false).unwrap();
        assert!(report.is_clean());
        assert_eq!(kinds(&report), vec!["misplaced_manifest"]);
    }

    #[test]
    fn persona_id_rules() {
        for good in ["a", "日本語", "🏴‍☠️ x", "a.b"] {
            assert_eq!(persona_id_problem(good), None);
        }
        for bad in [
            "",
            "a/b",
            "a\\b",
            "..",
            "x..y",
            "a\u{7}",
            "a\u{85}",
            ".",
            " ",
            " a",
            "a\u{3000}",
            "a\u{202E}b",
            "\u{200B}",
            "\u{FEFF}a",
        ] {
            assert!(persona_id_problem(bad).is_some(), "{bad:?}");
        }
        assert!(persona_id_problem(&"x".repeat(201)).is_some());
        assert!(persona_id_problem(&"x".repeat(200)).is_none());
    }

    #[test]
    fn an_edited_model_field_is_an_error() {
        let (tmp, dir) = tree();
        let path = dir.join(crate::manifest::MANIFEST_FILENAME);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen('{', "{\"model\": \"org/m\",", 1)).unwrap();
        assert!(validate(tmp.path(), false).unwrap().is_clean());
        fs::write(&path, text.replacen('{', "{\"model\": \"other/m\",", 1)).unwrap();
        let report = validate(tmp.path(), true).unwrap();
        assert_eq!(kinds(&report), vec!["model_mismatch"]);
    }

    #[test]
    fn deep_nesting_is_invalid_json() {
        let (_tmp, dir) = tree();
        let mut problems = Vec::new();
        let raw = "[".repeat(100_000);
        assert!(check_manifest(raw.as_bytes(), &dir.join("m"), &dir, &mut problems).is_none());
        assert!(
            problems[0].message.contains("not valid JSON"),
            "{problems:?}"
        );
    }
}
