//! Streamed aggregation over many safetensors files: sum, mean, variance (float64
//! accumulation) and stacking, optionally restricted to a subset of layers.
//!
//! Reductions split the files into a few fixed parts per pool thread, which the pool's threads
//! take as they come free (a thread the box keeps waiting leaves its next parts to the
//! others), each summed in file order and merged in part order, so the bits do not depend
//! on which thread added what.
//! Workers (rayon, across files) read with plain reads into buffers they reuse, so each
//! byte is read once and memory stays at a few buffers and accumulators plus the output,
//! whatever the number of files (mapping the files cost more in page faults and unmaps than
//! the copy). All rows come with one read of the file; a layer subset reads the header and
//! then only its rows. Reductions take a small group of files at a time and add them block
//! by block, so a block of the float64 accumulators stays in L1 while the group's values
//! are added to it, still one file after another. Inputs are F32, BF16 or F16 little-endian
//! `(num_layers, hidden_size)` tensors; outputs are float32.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::header::{artifact, open_regular, read_header, read_prefix_at, Header, HEADER_PROBE};

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

/// The 2-D tensor being aggregated, located in one file's header.
struct Located {
    dtype: Dtype,
    rows: usize,
    cols: usize,
    /// Absolute byte offset of the tensor's data in the file.
    begin: u64,
}

/// Find the 2-D float tensor `name` in the header of `path`.
fn locate(path: &Path, header: &Header, name: &str) -> Result<Located> {
    let info = header
        .tensor(name)
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
    Ok(Located {
        dtype,
        rows: to_usize(rows)?,
        cols: to_usize(cols)?,
        begin: info.begin,
    })
}

/// One little-endian f32.
#[inline(always)]
fn f32_at(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

/// One little-endian bf16, widened: bf16 is the top half of an f32, so this is a shift and
/// loops over it vectorise.
#[inline(always)]
fn bf16_at(c: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)
}

/// Decode little-endian `src` of `dtype` into `dst` (same element count). Always inlined, so
/// it is compiled for the caller's instruction set (see `add_group`).
#[inline(always)]
pub fn decode_into(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32_at(c);
            }
        }
        Dtype::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_at(c);
            }
        }
        Dtype::F16 => {
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            // SAFETY: any bit pattern is a valid u16; only the aligned middle is used.
            let (head, bits, tail) = unsafe { src.align_to::<u16>() };
            if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
                // The slice conversion uses the CPU's F16C instructions where it has them.
                let halves: &[half::f16] = bits.reinterpret_cast();
                halves.convert_to_f32_slice(&mut dst[..halves.len()]);
            } else {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
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

impl Plan {
    /// Elements per file that are read: the selected rows.
    fn len(&self) -> usize {
        self.layers.len() * self.cols
    }
}

fn plan(paths: &[PathBuf], tensor: &str, layers: Option<&[usize]>) -> Result<Plan> {
    let first = paths.first().ok_or_else(|| {
        Error::InvalidArgument("no files to aggregate; pass at least one path".into())
    })?;
    let probe = locate(first, &read_header(first)?, tensor)?;
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
    // All rows in their order are read as one range; any other choice row by row.
    let whole = layers.iter().copied().eq(0..probe.rows);
    Ok(Plan {
        rows: probe.rows,
        cols: probe.cols,
        layers,
        whole,
    })
}

/// Read the plan's rows of `path`'s tensor into `buf` (grown to fit, never shrunk), one
/// after another in the plan's order: returns their dtype and where they are in `buf`.
fn read_rows(
    path: &Path,
    tensor: &str,
    plan: &Plan,
    buf: &mut Vec<u8>,
) -> Result<(Dtype, Range<usize>)> {
    let io = |e| Error::io(path, e);
    let mut file = open_regular(path)?;
    let file_len = file.metadata().map_err(io)?.len();
    // All rows: header and tensor in one read (f32 is the widest dtype), landing 64-byte
    // aligned (the kernel copies page-cache pages into it ~8 % faster than at malloc's
    // 16-byte alignment, AMD EPYC); else the header.
    let (first, at) = if plan.whole {
        let first = HEADER_PROBE + plan.len() * 4;
        let room = usize::try_from(file_len).map_or(first, |len| len.min(first)) + ALIGN;
        // Grown before the offset is taken, so the read does not move the buffer.
        buf.reserve(room.saturating_sub(buf.len()));
        (first, buf.as_ptr().align_offset(ALIGN).min(ALIGN))
    } else {
        no_read_ahead(&file);
        (HEADER_PROBE, 0)
    };
    let (header, filled) =
        read_prefix_at(&mut file, file_len, buf, at, first).map_err(|e| e.at(path))?;
    let found = locate(path, &header, tensor)?;
    if (found.rows, found.cols) != (plan.rows, plan.cols) {
        return Err(artifact(
            path,
            &format!(
                "tensor {tensor:?} has shape ({}, {}) but the first file has ({}, {}); all files must match",
                found.rows, found.cols, plan.rows, plan.cols
            ),
        ));
    }
    let width = plan.cols * found.dtype.size();
    // The header checked that the tensor lies inside the file, so these offsets fit.
    let begin = found.begin as usize;
    if plan.whole {
        // Offsets in the file; the file's byte i is at buf[at + i].
        let end = begin + plan.rows * width;
        if end > filled {
            // What the first read did not bring (a long header, or other tensors first).
            let start = filled.max(begin);
            if start > filled {
                file.seek(SeekFrom::Start(start as u64)).map_err(io)?;
            }
            buf.resize(buf.len().max(at + end), 0);
            file.read_exact(&mut buf[at + start..at + end])
                .map_err(io)?;
        }
        return Ok((found.dtype, at + begin..at + end));
    }
    buf.resize(buf.len().max(plan.layers.len() * width), 0);
    for (i, &layer) in plan.layers.iter().enumerate() {
        read_row(
            &mut file,
            (begin + layer * width) as u64,
            &mut buf[i * width..(i + 1) * width],
        )
        .map_err(io)?;
    }
    Ok((found.dtype, 0..plan.layers.len() * width))
}

/// Where whole-file reads start in a buffer.
const ALIGN: usize = 64;

/// Tell the kernel not to read ahead past the rows asked for, so a layer subset of files
/// not in the page cache fetches those rows, not the layers after them. Only a hint.
fn no_read_ahead(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid open descriptor; the call only sets its read-ahead policy.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Read exactly `dst.len()` bytes at `offset`.
fn read_row(file: &mut File, offset: u64, dst: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(dst)
}

/// Stack the selected layers of every file: returns (data, [n_files, n_layers, hidden]).
pub fn stack(
    paths: &[PathBuf],
    tensor: &str,
    layers: Option<&[usize]>,
) -> Result<(Vec<f32>, [usize; 3])> {
    let plan = plan(paths, tensor, layers)?;
    let per_file = plan.len();
    let mut out = vec![0f32; paths.len() * per_file];
    out.par_chunks_mut(per_file.max(1))
        .zip(paths.par_iter())
        .try_for_each_init(Vec::new, |buf, (dst, path)| -> Result<()> {
            let (dtype, rows) = read_rows(path, tensor, &plan, buf)?;
            decode_into(dtype, &buf[rows], dst);
            Ok(())
        })?;
    Ok((out, [paths.len(), plan.layers.len(), plan.cols]))
}

/// Elements added per block: 8 KB of float64 sums (24 KB with the variance's), in L1.
const BLOCK: usize = 1024;
/// Bytes of float32 values a worker reads ahead of adding them, and the most files.
const GROUP_BYTES: usize = 4 << 20;
const MAX_GROUP: usize = 8;

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

    /// Add one file's `len` values at `offset`; `n` counts the files added so far, this one
    /// too. F32 and BF16 are widened as they are added (no pass through a decoded copy).
    #[inline(always)]
    fn add(&mut self, dtype: Dtype, bytes: &[u8], decoded: &mut [f32], offset: usize, n: u64) {
        let len = bytes.len() / dtype.size();
        match dtype {
            Dtype::F32 => self.add_values(bytes.chunks_exact(4).map(f32_at), offset, len, n),
            Dtype::BF16 => self.add_values(bytes.chunks_exact(2).map(bf16_at), offset, len, n),
            Dtype::F16 => {
                // The slice conversion is the fast one for F16 (F16C), so decode first.
                decode_into(dtype, bytes, &mut decoded[..len]);
                self.add_values(decoded[..len].iter().copied(), offset, len, n);
            }
        }
    }

    #[inline(always)]
    fn add_values(&mut self, values: impl Iterator<Item = f32>, offset: usize, len: usize, n: u64) {
        if self.track_variance {
            let n = n as f64;
            let mean = &mut self.mean[offset..offset + len];
            let m2 = &mut self.m2[offset..offset + len];
            for ((m, s), v) in mean.iter_mut().zip(m2.iter_mut()).zip(values) {
                let x = f64::from(v);
                let delta = x - *m;
                *m += delta / n;
                *s += delta * (x - *m);
            }
        } else {
            for (acc, v) in self.sum[offset..offset + len].iter_mut().zip(values) {
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

/// Add a group of read files (`read[k]` is file k's dtype and byte range in `bufs[k]`) to
/// `acc`, block by block so the sums stay in L1, one file after another. With AVX2 the
/// widening and the float64 adds run 4 wide instead of SSE2's 2 (bf16 ~12 % faster end to
/// end); the operations, and so the sums, are the same.
fn add_group(acc: &mut Moments, read: &[(Dtype, Range<usize>)], bufs: &[Vec<u8>], len: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { add_group_avx2(acc, read, bufs, len) };
    }
    add_group_body(acc, read, bufs, len);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_group_avx2(acc: &mut Moments, read: &[(Dtype, Range<usize>)], bufs: &[Vec<u8>], len: usize) {
    add_group_body(acc, read, bufs, len);
}

#[inline(always)]
fn add_group_body(acc: &mut Moments, read: &[(Dtype, Range<usize>)], bufs: &[Vec<u8>], len: usize) {
    let mut decoded = [0f32; BLOCK];
    for start in (0..len).step_by(BLOCK) {
        let end = (start + BLOCK).min(len);
        for (k, ((dtype, rows), buf)) in read.iter().zip(bufs).enumerate() {
            let size = dtype.size();
            let bytes = &buf[rows.start + start * size..rows.start + end * size];
            acc.add(*dtype, bytes, &mut decoded, start, acc.count + k as u64 + 1);
        }
    }
    acc.count += read.len() as u64;
}

/// Parts per pool thread: enough that a thread the box keeps waiting holds up little.
/// (Two threads sharing one core cost no more than one thread, measured: the pool never
/// loses to one thread, so it is always used.)
const PARTS_PER_THREAD: usize = 4;
/// The most bytes of float64 accumulators the extra parts may take.
const PARTS_BYTES: usize = 64 << 20;

/// A fixed run of consecutive files summed into its own accumulator in file order, so the
/// totals do not depend on which thread adds it, or when: every thread choice gives the
/// same bits.
struct Part<'a> {
    paths: &'a [PathBuf],
    acc: Moments,
}

/// What every part reads: the tensor, the plan, and the files per group.
struct Job<'a> {
    tensor: &'a str,
    plan: &'a Plan,
    group: usize,
}

impl Part<'_> {
    /// Add this part's files, reading into `bufs` (`job.group` of them).
    fn add_files(&mut self, job: &Job, bufs: &mut [Vec<u8>]) -> Result<()> {
        let len = job.plan.len();
        for group in self.paths.chunks(job.group) {
            let mut read = Vec::with_capacity(group.len());
            for (path, buf) in group.iter().zip(bufs.iter_mut()) {
                read.push(read_rows(path, job.tensor, job.plan, buf)?);
            }
            add_group(&mut self.acc, &read, bufs, len);
        }
        Ok(())
    }
}

/// Reduce the selected layers of every file element-wise: returns (data, [n_layers, hidden]).
pub fn reduce(
    paths: &[PathBuf],
    tensor: &str,
    layers: Option<&[usize]>,
    reduction: Reduction,
) -> Result<(Vec<f32>, [usize; 2])> {
    reduce_with(paths, tensor, layers, reduction, true)
}

/// `reduce` with the parts on the pool (`on_pool`) or one after another on this thread.
fn reduce_with(
    paths: &[PathBuf],
    tensor: &str,
    layers: Option<&[usize]>,
    reduction: Reduction,
    on_pool: bool,
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
    let len = plan.len();
    let track_variance = matches!(reduction, Reduction::Variance { .. });
    // A few parts per pool thread: memory stays at O(threads x len) however many files
    // there are, and the parts (so the sums) are the same whichever threads add them.
    let threads = rayon::current_num_threads().max(1);
    let acc_bytes = len * 8 * if track_variance { 2 } else { 1 };
    let most = (PARTS_BYTES / acc_bytes.max(1)).max(threads);
    let chunk = paths
        .len()
        .div_ceil((threads * PARTS_PER_THREAD).min(most))
        .max(1);
    let mut parts: Vec<Part> = paths
        .chunks(chunk)
        .map(|paths| Part {
            paths,
            acc: Moments::new(len, track_variance),
        })
        .collect();
    // Files read before they are added: a few MB of buffers per worker.
    let group = (GROUP_BYTES / (len * 4).max(1)).clamp(1, MAX_GROUP);
    let job = Job {
        tensor,
        plan: &plan,
        group,
    };
    if on_pool {
        parts.par_iter_mut().try_for_each_init(
            || vec![Vec::new(); group],
            |bufs, part| part.add_files(&job, bufs),
        )?;
    } else {
        let mut bufs = vec![Vec::new(); group];
        for part in &mut parts {
            part.add_files(&job, &mut bufs)?;
        }
    }
    let moments = parts
        .into_iter()
        .map(|p| p.acc)
        .fold(Moments::new(len, track_variance), Moments::merge);
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
    fn rows_are_found_wherever_the_tensor_lies() {
        use crate::header::tests::build;
        let dir = tempfile::tempdir().unwrap();
        // Another tensor first, short (the first read holds the tensor's start, not its
        // end) or long (the tensor starts past the first read): the bytes read are the same.
        for other in [7000, 20_000] {
            let bytes = build(
                &[
                    ("other", "U8", &[other]),
                    ("activations", "BF16", &[4, 300]),
                ],
                &[],
            );
            let path = dir.path().join(format!("{other}.safetensors"));
            std::fs::write(&path, &bytes).unwrap();
            let header = crate::header::parse_header(&bytes, bytes.len() as u64).unwrap();
            let begin = header.tensors["activations"].begin as usize;
            let mut want = vec![0f32; 4 * 300];
            decode_into(Dtype::BF16, &bytes[begin..], &mut want);
            let (all, _) = stack(std::slice::from_ref(&path), "activations", None).unwrap();
            assert_eq!(all.len(), want.len());
            assert!(all
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let (rows, _) = stack(&[path], "activations", Some(&[3, 1])).unwrap();
            let picked: Vec<f32> = want[900..].iter().chain(&want[300..600]).copied().collect();
            assert!(rows
                .iter()
                .zip(&picked)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn whole_files_are_read_to_a_64_byte_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let path = write(dir.path(), "a.safetensors", "F32", 3, 5, &values);
        let plan = plan(std::slice::from_ref(&path), "activations", None).unwrap();
        let header = read_header(&path).unwrap();
        let begin = header.tensor("activations").unwrap().begin as usize;
        // A buffer of any start, fresh or reused: the file's byte 0 lands aligned.
        for mut buf in [Vec::new(), vec![0u8; 3], Vec::with_capacity(1 << 16)] {
            for _ in 0..2 {
                let (_, rows) = read_rows(&path, "activations", &plan, &mut buf).unwrap();
                assert_eq!((buf.as_ptr() as usize + rows.start - begin) % ALIGN, 0);
                let mut got = vec![0f32; 15];
                decode_into(Dtype::F32, &buf[rows], &mut got);
                assert_eq!(got, values);
            }
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

    #[test]
    fn one_thread_and_the_pool_give_the_same_bits() {
        // Values of every scale, so any change in the order of the additions shows in the bits.
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (4, 257);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let paths: Vec<PathBuf> = (0..37)
            .map(|f| {
                let v: Vec<f32> = (0..rows * cols)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state as i64 as f64 / 2f64.powi(40 + (state % 23) as i32)) as f32
                    })
                    .collect();
                write(
                    dir.path(),
                    &format!("{f}.safetensors"),
                    "F32",
                    rows,
                    cols,
                    &v,
                )
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for reduction in [Reduction::Sum, Reduction::Variance { ddof: 1 }] {
            let run = |on_pool| {
                let (out, _) = pool
                    .install(|| reduce_with(&paths, "activations", None, reduction, on_pool))
                    .unwrap();
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            let one = run(false);
            assert_eq!(one, run(true), "{reduction:?}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_add_gives_the_same_bits_as_the_plain_one() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        // Odd length: a partial block and vector tails. Values of every sign and scale.
        let len = 3 * BLOCK + 37;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            let bufs: Vec<Vec<u8>> = (0..5)
                .map(|_| {
                    (0..len)
                        .flat_map(|_| {
                            let x = (next() as i64 as f64 / 2f64.powi(60)) as f32;
                            match dtype {
                                Dtype::F32 => x.to_le_bytes().to_vec(),
                                Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                                Dtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                            }
                        })
                        .collect()
                })
                .collect();
            let read: Vec<_> = bufs.iter().map(|b| (dtype, 0..b.len())).collect();
            for track_variance in [false, true] {
                let (mut plain, mut wide) = (
                    Moments::new(len, track_variance),
                    Moments::new(len, track_variance),
                );
                for _ in 0..2 {
                    add_group_body(&mut plain, &read, &bufs, len);
                    // SAFETY: AVX2 was detected above.
                    unsafe { add_group_avx2(&mut wide, &read, &bufs, len) };
                }
                let bits = |m: &Moments| -> Vec<u64> {
                    [&m.sum, &m.mean, &m.m2]
                        .iter()
                        .flat_map(|v| v.iter().map(|x| x.to_bits()))
                        .collect()
                };
                assert_eq!(
                    bits(&plain),
                    bits(&wide),
                    "{dtype:?}, variance {track_variance}"
                );
                if !track_variance {
                    // Values widened as they are added: the float64 sums of the decoded
                    // values in file order, bit for bit.
                    let mut want = vec![0f64; len];
                    let mut values = vec![0f32; len];
                    for _ in 0..2 {
                        for buf in &bufs {
                            decode_into(dtype, buf, &mut values);
                            for (w, &v) in want.iter_mut().zip(&values) {
                                *w += f64::from(v);
                            }
                        }
                    }
                    let got: Vec<u64> = plain.sum.iter().map(|x| x.to_bits()).collect();
                    let want: Vec<u64> = want.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(got, want, "{dtype:?}");
                }
                assert_eq!(plain.count, 10);
            }
        }
    }
}
