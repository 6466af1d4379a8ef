//! The tree walk (variant folders, never following symlinks) and the per-folder check of
//! the manifest against the files on disk, which queues the tensor files to check.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::model::{persona_id_problem, read_manifest};
use super::report::{error, warning, Problem};
use super::tensor::{Expect, FileTask};
use super::{LOCK_FILENAME, MANIFEST_FILENAME, SAMPLES_DIRNAME, TENSOR_SUFFIX};

/// Variant folders sit three levels below the root (`model/strategy/variant`); a little
/// slack lets users point at a parent of the root.
const MAX_DEPTH: usize = 6;

/// Collect variant folders (folders holding a manifest or tensor files) without following
/// symlinks; a symlinked folder is reported when it leads outside the tree.
pub(super) fn walk(
    dir: &Path,
    root: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(error(dir, "unreadable", format!("cannot list folder: {e}")));
            return;
        }
    };
    let mut is_variant = false;
    let mut subdirs = Vec::new();
    let mut temps = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            if name != SAMPLES_DIRNAME {
                subdirs.push(path);
            }
        } else if kind.is_symlink() && path.is_dir() {
            symlink_problem(&path, root, problems);
        } else if name == MANIFEST_FILENAME || name.ends_with(TENSOR_SUFFIX) {
            // Symlinked tensor files count too: the variant check reports them.
            is_variant = true;
        } else if is_temp_file(&name) {
            temps.push(path);
        }
    }
    if is_variant {
        out.push(dir.to_path_buf());
        return;
    }
    // A run killed during its first save leaves temp files in a folder with nothing else.
    for path in temps {
        problems.push(stale_temp(&path));
    }
    if depth >= MAX_DEPTH {
        return;
    }
    subdirs.sort();
    for sub in subdirs {
        walk(&sub, root, depth + 1, out, problems);
    }
}

/// A temporary file of pvrs's atomic writes (`.<name>.<random>.tmp`).
fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn stale_temp(path: &Path) -> Problem {
    warning(
        path,
        "stale_temp_file",
        "temporary file left by an interrupted write; safe to delete (the next save there removes it)",
    )
}

/// Report a symlink that leaves the tree (the walk never follows symlinked folders).
fn symlink_problem(path: &Path, root: &Path, problems: &mut Vec<Problem>) {
    match fs::canonicalize(path) {
        Ok(target) if !target.starts_with(root) => problems.push(error(
            path,
            "symlink_outside_tree",
            format!(
                "symlink points outside the tree (to {}); copy the data in instead",
                target.display()
            ),
        )),
        Ok(_) => problems.push(warning(
            path,
            "symlinked_folder",
            "symlinked folder inside the tree is not followed",
        )),
        Err(e) => problems.push(error(
            path,
            "broken_symlink",
            format!("broken symlink ({e})"),
        )),
    }
}

/// Check one variant folder; push per-file work onto `tasks`. Returns the persona count.
pub(super) fn check_variant_dir(
    dir: &Path,
    tasks: &mut Vec<FileTask>,
    problems: &mut Vec<Problem>,
) -> usize {
    let manifest_path = dir.join(MANIFEST_FILENAME);
    let view = if manifest_path.exists() || fs::symlink_metadata(&manifest_path).is_ok() {
        read_manifest(&manifest_path, dir, problems)
    } else {
        problems.push(error(
            &manifest_path,
            "missing_manifest",
            "tensor files but no manifest.json (an interrupted first save?); re-run the extraction",
        ));
        None
    };
    let (shape, recorded) = match &view {
        Some(v) => (v.shape, v.personas.clone()),
        None => (None, BTreeMap::new()),
    };

    // Tensor files by persona id, with the listing's entry type (saves a stat per file).
    let mut on_disk = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                // A lossy name would point at another (missing) file: report this one as is.
                problems.push(error(
                    &path,
                    "non_utf8_name",
                    "file name is not valid UTF-8; persona ids are UTF-8, rename or delete it",
                ));
                continue;
            };
            let kind = entry.file_type().ok();
            let is_dir = kind.is_some_and(|t| t.is_dir());
            if name == MANIFEST_FILENAME || name == LOCK_FILENAME {
                continue;
            }
            if let Some(id) = name.strip_suffix(TENSOR_SUFFIX) {
                on_disk.insert(id.to_string(), kind);
            } else if is_dir && name == SAMPLES_DIRNAME {
                sample_tasks(&path, shape, &recorded, tasks, problems);
            } else if is_temp_file(&name) {
                problems.push(stale_temp(&path));
            } else if !is_dir {
                problems.push(warning(
                    &path,
                    "unexpected_file",
                    "not part of a pvrs variant folder",
                ));
            }
        }
    }
    for (id, sha256) in &recorded {
        if persona_id_problem(id).is_some() {
            continue; // already reported by read_manifest; never build a path from it
        }
        if let Some(&kind) = on_disk.get(id) {
            tasks.push(FileTask {
                path: dir.join(format!("{id}{TENSOR_SUFFIX}")),
                expect: Expect::Vector {
                    shape,
                    sha256: sha256.clone(),
                },
                kind,
            });
        } else {
            problems.push(error(
                &dir.join(format!("{id}{TENSOR_SUFFIX}")),
                "missing_tensor",
                format!(
                    "manifest records persona {id:?} but its tensor file is missing; re-extract it"
                ),
            ));
        }
    }
    for (id, &kind) in on_disk.iter().filter(|(id, _)| !recorded.contains_key(*id)) {
        let path = dir.join(format!("{id}{TENSOR_SUFFIX}"));
        if view.is_some() {
            problems.push(error(
                &path,
                "orphan_tensor",
                "tensor file not recorded in manifest.json (an interrupted run?); re-run the \
                 extraction to record it or delete the file",
            ));
        }
        // Unrecorded files are still checked (headers, symlinks) so every problem shows.
        tasks.push(FileTask {
            path,
            expect: Expect::Vector {
                shape,
                sha256: None,
            },
            kind,
        });
    }
    recorded.len()
}

fn sample_tasks(
    dir: &Path,
    shape: Option<(u64, u64)>,
    recorded: &BTreeMap<String, Option<String>>,
    tasks: &mut Vec<FileTask>,
    problems: &mut Vec<Problem>,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        problems.push(error(dir, "unreadable", "cannot list folder"));
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match name.strip_suffix(TENSOR_SUFFIX) {
            Some(id) => {
                if !recorded.contains_key(id) {
                    problems.push(warning(
                        &path,
                        "orphan_samples",
                        format!("per-sample vectors for persona {id:?}, which the manifest does not record"),
                    ));
                }
                tasks.push(FileTask {
                    path,
                    expect: Expect::Samples { shape },
                    kind: entry.file_type().ok(),
                });
            }
            None if is_temp_file(&name) => problems.push(stale_temp(&path)),
            None => problems.push(warning(
                &path,
                "unexpected_file",
                "not part of a pvrs samples folder",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{kinds, link_outside, tree};
    use super::*;
    use crate::manifest::validate;

    #[test]
    fn odd_names_and_linked_only_folders_are_reported() {
        use std::os::unix::ffi::OsStrExt;
        let (tmp, dir) = tree();
        let odd = std::ffi::OsStr::from_bytes(b"\xffodd.safetensors");
        fs::write(dir.join(odd), b"x").unwrap();
        let k = kinds(&validate(tmp.path(), false).unwrap());
        assert!(k.contains(&"non_utf8_name"), "{k:?}");
        // A variant folder whose only tensor is a link out of the tree is still checked.
        let linked = dir.with_file_name("biography"); // beside the tree's templated folder
        fs::create_dir_all(&linked).unwrap();
        let _outside = link_outside(&linked);
        let report = validate(tmp.path(), false).unwrap();
        assert_eq!(report.variant_dirs, 2);
        assert!(kinds(&report).contains(&"symlink_outside_tree"));
    }

    #[test]
    fn temp_files_are_reported_in_folders_without_a_manifest() {
        let (tmp, _dir) = tree();
        let first = tmp
            .path()
            .join("org__m")
            .join("answer_mean")
            .join("biography");
        fs::create_dir_all(&first).unwrap();
        fs::write(first.join(".a.safetensors.x1.tmp"), b"partial").unwrap();
        let report = validate(tmp.path(), false).unwrap();
        assert_eq!(kinds(&report), vec!["stale_temp_file"]);
    }
}
