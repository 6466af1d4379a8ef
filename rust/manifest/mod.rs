//! `pvrs validate`: checks a persona-vector tree (or one variant folder) and reports every
//! problem, never only the first.
//!
//! Per variant folder (`<model_dir>/<mask_strategy>/<variant>/`): the manifest's JSON shape
//! and types, persona ids safe as file names, every recorded persona has its tensor and no
//! tensor is unrecorded, and per tensor file a bounds-checked header (`crate::header`), an
//! `activations` tensor of a float dtype whose shape matches the manifest. `deep` adds a
//! streamed NaN/Inf scan and the sha256 check. Hostile input (truncated files, huge header
//! lengths, overlapping offsets, FIFOs, symlinks leaving the tree, `..` ids) becomes a
//! problem in the report: the walk never follows symlinks and never opens non-regular files.
//!
//! `walk` finds the variant folders and checks each one against its manifest, `model`
//! reads and checks `manifest.json` itself, `tensor` checks every tensor file, and
//! `report` holds the problems found.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};

mod model;
mod report;
mod tensor;
#[cfg(test)]
mod test_util;
mod walk;

pub use model::persona_id_problem;
pub use report::{Problem, Report, Severity};

use report::error;
use tensor::check_files;
use walk::{check_variant_dir, walk};

pub const MANIFEST_FILENAME: &str = "manifest.json";
pub const LOCK_FILENAME: &str = ".manifest.lock";
pub const TENSOR_KEY: &str = "activations";
pub const TENSOR_SUFFIX: &str = ".safetensors";
pub const SAMPLES_DIRNAME: &str = "samples";
pub const MAX_PERSONA_ID_BYTES: usize = 200;

/// The problems `validate` finds in a manifest's `bytes` read from `path` (its JSON, field
/// types, persona ids and the folders it lives in): the check every reader applies.
pub fn manifest_problems(bytes: &[u8], path: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    model::check_manifest(bytes, path, dir, &mut problems);
    problems
}

/// Validate the tree or variant folder at `path`. `Err` only when `path` itself cannot be
/// read; everything wrong inside it is a `Problem`.
pub fn validate(path: &Path, deep: bool) -> Result<Report> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder; pass an artifacts tree or a variant folder holding manifest.json",
            path.display()
        )));
    }
    let root = fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let mut report = Report {
        root: path.display().to_string(),
        deep,
        ..Report::default()
    };
    let mut variant_dirs = Vec::new();
    walk(path, &root, 0, &mut variant_dirs, &mut report.problems);
    if variant_dirs.is_empty() {
        report.problems.push(error(
            path,
            "no_artifacts",
            "no manifest.json or .safetensors files found; pass an artifacts tree \
             (<root>/<model>/<strategy>/<variant>/) or one variant folder",
        ));
    }
    // Folders in parallel, and each folder's files in parallel as soon as its manifest is
    // read: parsing one manifest overlaps hashing another's files.
    let per_dir: Vec<(usize, usize, Vec<Problem>)> = variant_dirs
        .par_iter()
        .map(|dir| {
            let (mut tasks, mut problems) = (Vec::new(), Vec::new());
            let personas = check_variant_dir(dir, &mut tasks, &mut problems);
            // Files two by two (a deep check hashes two at once), with two read buffers per
            // rayon job, reused across its files.
            problems.par_extend(
                tasks
                    .par_chunks(2)
                    .map_init(Default::default, |bufs, pair| {
                        check_files(pair, &root, deep, bufs)
                    })
                    .flatten_iter(),
            );
            (personas, tasks.len(), problems)
        })
        .collect();
    report.variant_dirs = variant_dirs.len();
    for (personas, files, problems) in per_dir {
        report.personas += personas;
        report.files_checked += files;
        report.problems.extend(problems);
    }
    report.problems.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::test_util::{kinds, tree, vector_file};
    use super::*;

    #[test]
    fn a_clean_tree_passes() {
        let (tmp, dir) = tree();
        let report = validate(tmp.path(), true).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            (report.variant_dirs, report.personas, report.files_checked),
            (1, 2, 2)
        );
        assert!(validate(&dir, false).unwrap().is_clean());
    }

    #[test]
    fn reports_every_problem() {
        let (tmp, dir) = tree();
        fs::remove_file(dir.join("a.safetensors")).unwrap();
        vector_file(&dir, "b", &[2, 4]); // wrong shape, and its sha256 changes
        vector_file(&dir, "orphan", &[2, 3]);
        fs::write(dir.join(".x.safetensors.abc.tmp"), b"partial").unwrap();
        let report = validate(tmp.path(), true).unwrap();
        let k = kinds(&report);
        for want in [
            "missing_tensor",
            "shape_mismatch",
            "sha256_mismatch",
            "orphan_tensor",
            "stale_temp_file",
        ] {
            assert!(k.contains(&want), "{want} not in {k:?}");
        }
        assert!(!report.is_clean());
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(validate(Path::new("/nonexistent/pvrs"), false).is_err());
    }
}
