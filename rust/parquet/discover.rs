//! Finding the `<model_dir>/<mask>/<variant>` store folders to package.

use std::fs;
use std::path::Path;

use super::{SplitSource, MANIFEST};
use crate::error::{Error, Result};

fn sorted_subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.path().is_dir() {
            continue;
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
    let present = sorted_subdirs(root)?;
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
        let present_masks = sorted_subdirs(&model_path)?;
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
            for variant in sorted_subdirs(&model_path.join(&mask))? {
                let dir = model_path.join(&mask).join(&variant);
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
}
