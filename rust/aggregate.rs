//! Streamed aggregation over many safetensors files: sum, mean, variance (float64
//! accumulation) and stacking, optionally restricted to a subset of layers.
//!
//! Files are memory-mapped one at a time per worker (rayon across files), so memory stays
//! at a few accumulators plus the output, whatever the number of files. Inputs are F32,
//! BF16 or F16 little-endian `(num_layers, hidden_size)` tensors; outputs are float32.
//! With a layer subset only those rows' pages are touched (`MADV_RANDOM` stops the
//! kernel from reading ahead into the other layers).

use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::header::{artifact, open_regular, parse_header, Header, TensorInfo};

/// Element types the aggregation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    BF16,
    F16,
}

impl Dtype {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Dtype::F32),
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
        }
    }
}

/// Reductions over files (element-wise across the file axis).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reduction {
    Sum,
    Mean,
    /// Variance with `ddof` delta degrees of freedom (0: population, 1: sample).
    Variance {
        ddof: u32,
    },
}

impl Reduction {
    pub fn parse(name: &str, ddof: u32) -> Result<Self> {
        match name {
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            "var" | "variance" => Ok(Reduction::Variance { ddof }),
            other => Err(Error::InvalidArgument(format!(
                "unknown reduction {other:?}; choose sum, mean or var"
            ))),
        }
    }
}

/// A memory-mapped file with its parsed header and the tensor being aggregated.
pub struct MappedTensor {
    pub path: PathBuf,
    map: Mmap,
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    info: TensorInfo,
}

impl MappedTensor {
    /// Map `path` and locate the 2-D tensor `name`. `whole`: all rows will be read
    /// (sequential read-ahead); otherwise only a few rows (no read-ahead, so the other
    /// layers' bytes are never fetched).
    pub fn open(path: &Path, name: &str, whole: bool) -> Result<Self> {
        let file = open_regular(path)?;
        // SAFETY: the map is read-only; pvrs replaces files by rename, never in place, so a
        // concurrent pvrs writer cannot change mapped bytes. Every offset is bounds-checked.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // Advise before the first access: the header read faults the first page in.
        // Advice is only a hint; failing to give it changes nothing but speed.
        let _ = map.advise(if whole {
            Advice::Sequential
        } else {
            Advice::Random
        });
        let header: Header =
            parse_header(&map, map.len() as u64).map_err(|r| artifact(path, &r))?;
        let info = header
            .tensor(name)
            .cloned()
            .ok_or_else(|| artifact(path, &format!("no {name:?} tensor")))?;
        let dtype = Dtype::parse(&info.dtype).ok_or_else(|| {
            artifact(
                path,
                &format!(
                    "tensor {name:?} has dtype {}; pvrs reads F32, BF16 or F16",
                    info.dtype
                ),
            )
        })?;
        let [rows, cols] = info.shape[..] else {
            return Err(artifact(
                path,
                &format!(
                    "tensor {name:?} has shape {:?}; expected (num_layers, hidden_size)",
                    info.shape
                ),
            ));
        };
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| artifact(path, "tensor too large"));
        Ok(MappedTensor {
            path: path.to_path_buf(),
            map,
            dtype,
            rows: to_usize(rows)?,
            cols: to_usize(cols)?,
            info,
        })
    }

    /// The little-endian bytes of row `layer` (the caller checked `layer < rows`).
    fn row(&self, layer: usize) -> &[u8] {
        let width = self.cols * self.dtype.size();
        let start = self.info.begin as usize + layer * width;
        &self.map[start..start + width]
    }
}

/// Decode little-endian `src` of `dtype` into `dst` (same element count).
pub fn decode_into(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        Dtype::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

/// Shape of the tensors and the rows selected.
struct Plan {
    rows: usize,
    cols: usize,
    layers: Vec<usize>,
    whole: bool,
}

fn plan(paths: &[PathBuf], tensor: &str, layers: Option<&[usize]>) -> Result<Plan> {
    let first = paths.first().ok_or_else(|| {
        Error::InvalidArgument("no files to aggregate; pass at least one path".into())
    })?;
    let probe = MappedTensor::open(first, tensor, false)?;
    let layers: Vec<usize> = match layers {
        Some(chosen) => {
            if chosen.is_empty() {
                return Err(Error::InvalidArgument(
                    "layers is empty; pass None for all layers".into(),
                ));
            }
            if let Some(&bad) = chosen.iter().find(|&&l| l >= probe.rows) {
                return Err(Error::InvalidArgument(format!(
                    "layer {bad} is out of range: {} has {} layers (0..{})",
                    first.display(),
                    probe.rows,
                    probe.rows
                )));
            }
            chosen.to_vec()
        }
        None => (0..probe.rows).collect(),
    };
    let whole = layers.len() == probe.rows;
    Ok(Plan {
        rows: probe.rows,
        cols: probe.cols,
        layers,
        whole,
    })
}

fn open_checked(path: &Path, tensor: &str, plan: &Plan) -> Result<MappedTensor> {
    let mapped = MappedTensor::open(path, tensor, plan.whole)?;
    if (mapped.rows, mapped.cols) != (plan.rows, plan.cols) {
        return Err(artifact(
            path,
            &format!(
                "tensor {tensor:?} has shape ({}, {}) but the first file has ({}, {}); all files must match",
                mapped.rows, mapped.cols, plan.rows, plan.cols
            ),
        ));
    }
    Ok(mapped)
}

/// Stack the selected layers of every file: returns (data, [n_files, n_layers, hidden]).
pub fn stack(
    paths: &[PathBuf],
    tensor: &str,
    layers: Option<&[usize]>,
) -> Result<(Vec<f32>, [usize; 3])> {
    let plan = plan(paths, tensor, layers)?;
    let per_file = plan.layers.len() * plan.cols;
    let mut out = vec![0f32; paths.len() * per_file];
    out.par_chunks_mut(per_file.max(1))
        .zip(paths.par_iter())
        .try_for_each(|(dst, path)| -> Result<()> {
            let mapped = open_checked(path, tensor, &plan)?;
            for (row_out, &layer) in dst.chunks_mut(plan.cols).zip(&plan.layers) {
                decode_into(mapped.dtype, mapped.row(layer), row_out);
            }
            Ok(())
        })?;
    Ok((out, [paths.len(), plan.layers.len(), plan.cols]))
}

/// Per-element running count, mean and sum of squared deviations (Welford), in float64;
/// partial results merge exactly (Chan et al.), so rayon can split the files freely.
struct Moments {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    sum: Vec<f64>,
    track_variance: bool,
}

impl Moments {
    fn new(len: usize, track_variance: bool) -> Self {
        Moments {
            count: 0,
            mean: if track_variance {
                vec![0.0; len]
            } else {
                Vec::new()
            },
            m2: if track_variance {
                vec![0.0; len]
            } else {
                Vec::new()
            },
            sum: if track_variance {
                Vec::new()
            } else {
                vec![0.0; len]
            },
            track_variance,
        }
    }

    fn add(&mut self, values: &[f32], offset: usize) {
        if self.track_variance {
            let n = (self.count + 1) as f64;
            let mean = &mut self.mean[offset..offset + values.len()];
            let m2 = &mut self.m2[offset..offset + values.len()];
            for ((m, s), &v) in mean.iter_mut().zip(m2.iter_mut()).zip(values) {
                let x = f64::from(v);
                let delta = x - *m;
                *m += delta / n;
                *s += delta * (x - *m);
            }
        } else {
            for (acc, &v) in self.sum[offset..offset + values.len()]
                .iter_mut()
                .zip(values)
            {
                *acc += f64::from(v);
            }
        }
    }

    fn merge(mut self, other: Moments) -> Moments {
        if other.count == 0 {
            return self;
        }
        if self.count == 0 {
            return other;
        }
        if self.track_variance {
            let (na, nb) = (self.count as f64, other.count as f64);
            let n = na + nb;
            for i in 0..self.mean.len() {
                let delta = other.mean[i] - self.mean[i];
                self.mean[i] += delta * nb / n;
                self.m2[i] += other.m2[i] + delta * delta * na * nb / n;
            }
        } else {
            for (a, b) in self.sum.iter_mut().zip(&other.sum) {
                *a += b;
            }
        }
        self.count += other.count;
        self
    }
}

/// Reduce the selected layers of every file element-wise: returns (data, [n_layers, hidden]).
pub fn reduce(
    paths: &[PathBuf],
    tensor: &str,
    layers: Option<&[usize]>,
    reduction: Reduction,
) -> Result<(Vec<f32>, [usize; 2])> {
    let plan = plan(paths, tensor, layers)?;
    if let Reduction::Variance { ddof } = reduction {
        if paths.len() as u64 <= u64::from(ddof) {
            return Err(Error::InvalidArgument(format!(
                "variance with ddof={ddof} needs more than {ddof} files, got {}",
                paths.len()
            )));
        }
    }
    let len = plan.layers.len() * plan.cols;
    let track_variance = matches!(reduction, Reduction::Variance { .. });
    // One accumulator per worker-sized chunk of files keeps memory at
    // O(threads x len) however many files there are.
    let chunk = paths
        .len()
        .div_ceil(rayon::current_num_threads().max(1))
        .max(1);
    let moments = paths
        .par_chunks(chunk)
        .map(|chunk_paths| -> Result<Moments> {
            let mut acc = Moments::new(len, track_variance);
            let mut row = vec![0f32; plan.cols];
            for path in chunk_paths {
                let mapped = open_checked(path, tensor, &plan)?;
                for (i, &layer) in plan.layers.iter().enumerate() {
                    decode_into(mapped.dtype, mapped.row(layer), &mut row);
                    acc.add(&row, i * plan.cols);
                }
                acc.count += 1;
            }
            Ok(acc)
        })
        .try_reduce(|| Moments::new(len, track_variance), |a, b| Ok(a.merge(b)))?;
    let n = moments.count as f64;
    let out: Vec<f32> = match reduction {
        Reduction::Sum => moments.sum.iter().map(|&s| s as f32).collect(),
        Reduction::Mean => moments.sum.iter().map(|&s| (s / n) as f32).collect(),
        Reduction::Variance { ddof } => moments
            .m2
            .iter()
            .map(|&m2| (m2 / (n - f64::from(ddof))) as f32)
            .collect(),
    };
    Ok((out, [plan.layers.len(), plan.cols]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        dir: &Path,
        name: &str,
        dtype: &str,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> PathBuf {
        let mut data = Vec::new();
        for &v in values {
            match dtype {
                "F32" => data.extend(v.to_le_bytes()),
                "BF16" => data.extend(half::bf16::from_f32(v).to_le_bytes()),
                "F16" => data.extend(half::f16::from_f32(v).to_le_bytes()),
                _ => unreachable!(),
            }
        }
        let json = format!(
            r#"{{"activations":{{"dtype":"{dtype}","shape":[{rows},{cols}],"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json.as_bytes());
        bytes.extend(data);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn files(dir: &Path, dtype: &str) -> (Vec<PathBuf>, Vec<Vec<f32>>) {
        let (rows, cols) = (3, 5);
        let mut paths = Vec::new();
        let mut values = Vec::new();
        for f in 0..7 {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((f * 31 + i * 7) % 17) as f32 * 0.5 - 3.0)
                .collect();
            paths.push(write(
                dir,
                &format!("{f}.safetensors"),
                dtype,
                rows,
                cols,
                &v,
            ));
            values.push(v);
        }
        (paths, values)
    }

    #[test]
    fn stack_and_reduce_match_a_direct_computation() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in ["F32", "BF16", "F16"] {
            let sub = dir.path().join(dtype);
            std::fs::create_dir(&sub).unwrap();
            let (paths, values) = files(&sub, dtype);
            let (data, shape) = stack(&paths, "activations", Some(&[2, 0])).unwrap();
            assert_eq!(shape, [7, 2, 5]);
            assert_eq!(&data[..5], &values[0][10..15]);
            assert_eq!(&data[5..10], &values[0][..5]);
            let n = values.len() as f64;
            let mean: Vec<f64> = (0..15)
                .map(|i| values.iter().map(|v| f64::from(v[i])).sum::<f64>() / n)
                .collect();
            let (m, shape) = reduce(&paths, "activations", None, Reduction::Mean).unwrap();
            assert_eq!(shape, [3, 5]);
            for i in 0..15 {
                assert!((f64::from(m[i]) - mean[i]).abs() < 1e-6);
            }
            let (var, _) =
                reduce(&paths, "activations", None, Reduction::Variance { ddof: 1 }).unwrap();
            for i in 0..15 {
                let want = values
                    .iter()
                    .map(|v| (f64::from(v[i]) - mean[i]).powi(2))
                    .sum::<f64>()
                    / (n - 1.0);
                assert!((f64::from(var[i]) - want).abs() < 1e-5, "{dtype} {i}");
            }
            let (s, _) = reduce(&paths, "activations", Some(&[1]), Reduction::Sum).unwrap();
            assert!((f64::from(s[0]) - mean[5] * n).abs() < 1e-4);
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.safetensors", "F32", 2, 2, &[0.0; 4]);
        let b = write(dir.path(), "b.safetensors", "F32", 3, 2, &[0.0; 6]);
        let err = stack(&[a.clone(), b], "activations", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.safetensors") && err.contains("all files must match"),
            "{err}"
        );
        let err = reduce(
            std::slice::from_ref(&a),
            "activations",
            Some(&[5]),
            Reduction::Mean,
        )
        .unwrap_err();
        assert!(err.to_string().contains("layer 5 is out of range"));
        let err = reduce(std::slice::from_ref(&a), "other", None, Reduction::Mean).unwrap_err();
        assert!(err.to_string().contains("no \"other\" tensor"));
        let err = reduce(&[a], "activations", None, Reduction::Variance { ddof: 1 }).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(stack(&[], "activations", None).is_err());
        let c = dir.path().join("c.safetensors");
        std::fs::write(&c, b"garbage").unwrap();
        assert!(matches!(
            stack(&[c], "activations", None),
            Err(Error::Artifact(_))
        ));
    }
}
