//! Finding the `<model_dir>/<mask>/<variant>` store folders to package.

use std::fs;
use std::path::Path;

use super::{SplitSource, MANIFEST};
use crate::error::{Error, Result};

/// Sub-folders of `dir`; a symlinked one that leads out of `root` is refused, as `pvrs
/// validate` refuses it (what is published must be the store's own data).
fn sorted_subdirs(dir: &Path, root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            let target = fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
            if !target.starts_with(root) {
                return Err(Error::Artifact(format!(
                    "{}: symlink points outside the store (to {}); copy the data in instead \
                     (`pvrs validate` reports it)",
                    path.display(),
                    target.display()
                )));
            }
        }
        match entry.file_name().into_string() {
            Ok(name) if !name.starts_with('.') => names.push(name),
            _ => {}
        }
    }
    names.sort();
    Ok(names)
}

/// Every `<model_dir>/<mask>/<variant>/manifest.json` under `root`, sorted, optionally
/// restricted to some model folders and mask strategies. Names asked for but absent are an
/// error (a typo should not silently publish nothing).
pub fn discover(
    root: &Path,
    model_dirs: Option<&[String]>,
    masks: Option<&[String]>,
) -> Result<Vec<SplitSource>> {
    if !root.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "activation store {} does not exist; pass the folder that holds <model>/<mask>/<variant>/manifest.json (--root)",
            root.display()
        )));
    }
    let canonical = fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let present = sorted_subdirs(root, &canonical)?;
    let models: Vec<String> = match model_dirs {
        Some(wanted) => {
            for m in wanted {
                if !present.contains(m) {
                    return Err(Error::InvalidArgument(format!(
                        "no activations for model folder {m:?} in {}; found: {}",
                        root.display(),
                        listing(&present)
                    )));
                }
            }
            let mut w = wanted.to_vec();
            w.sort();
            w.dedup();
            w
        }
        None => present,
    };
    let mut out = Vec::new();
    for model in &models {
        let model_path = root.join(model);
        let present_masks = sorted_subdirs(&model_path, &canonical)?;
        let chosen: Vec<String> = match masks {
            Some(wanted) => {
                let mut w: Vec<String> = wanted.to_vec();
                w.sort();
                w.dedup();
                for m in &w {
                    if !present_masks.contains(m) {
                        return Err(Error::InvalidArgument(format!(
                            "model folder {model:?} has no {m:?} activations; found: {}",
                            listing(&present_masks)
                        )));
                    }
                }
                w
            }
            None => present_masks,
        };
        for mask in chosen {
            for variant in sorted_subdirs(&model_path.join(&mask), &canonical)? {
                let dir = model_path.join(&mask).join(&variant);
                if !dir.join(MANIFEST).is_file() && holds_tensors(&dir)? {
                    return Err(Error::Manifest(format!(
                        "{}: holds .safetensors files but no {MANIFEST}; restore the manifest \
                         (or move the tensors out) and run `pvrs validate {}`",
                        dir.display(),
                        dir.display()
                    )));
                }
                if dir.join(MANIFEST).is_file() {
                    out.push(SplitSource {
                        model_dir: model.clone(),
                        mask_strategy: mask.clone(),
                        variant,
                        dir,
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no manifest.json found under {}; run `pvrs extract` first or pass the right --root",
            root.display()
        )));
    }
    Ok(out)
}

fn holds_tensors(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(".safetensors")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::tree;
    use super::*;

    #[test]
    fn discovers_sorted_sources() {
        let (tmp, src) = tree(1);
        assert_eq!(src.config(), "m__x__answer_mean");
        assert_eq!(src.variant, "templated");
        let err = discover(tmp.path(), Some(&["nope".into()]), None).unwrap_err();
        assert!(err.to_string().contains("nope"));
        let err = discover(tmp.path(), None, Some(&["persona_last".into()])).unwrap_err();
        assert!(err.to_string().contains("answer_mean"));
    }

    #[test]
    fn hidden_tensors_and_folders_leaving_the_store_are_errors() {
        let (tmp, src) = tree(1);
        let manifest = src.dir.join(MANIFEST);
        let kept = fs::read(&manifest).unwrap();
        fs::remove_file(&manifest).unwrap();
        let err = discover(tmp.path(), None, None).unwrap_err().to_string();
        assert!(err.contains("no manifest.json; restore"), "{err}");
        fs::write(&manifest, kept).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let linked = src.dir.with_file_name("biography");
        std::os::unix::fs::symlink(outside.path(), &linked).unwrap();
        let err = discover(tmp.path(), None, None).unwrap_err().to_string();
        assert!(err.contains("symlink points outside the store"), "{err}");
    }
}
