"""Typed stub of the native module `pvrs._core` (built from `rust/py.rs`).

Kept honest by `tests/test_stub.py`, which compares these names and signatures with the
compiled module."""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import numpy as np
from numpy.typing import NDArray

__version__: str

def sha256_file(path: str | PathLike[str]) -> str:
    """Streamed sha256 (lower-case hex) of a file. Releases the GIL."""

def build_info() -> dict[str, object]:
    """Version, build profile ("debug"/"release"), features and rayon thread count."""

def _panic_for_tests() -> None:
    """Panics inside Rust; raises `pvrs.InternalError`. Test-only."""

# ---- store ----

def read_safetensors_header(path: str | PathLike[str]) -> dict[str, object]:
    """Bounds-checked header: {header_len, metadata, tensors: {name: {dtype, shape, data_offsets}}}.
    Raises `pvrs.ArtifactError` naming the file when it is malformed. Releases the GIL."""

def aggregate_files(
    paths: list[str | PathLike[str]],
    op: str = "mean",
    layers: list[int] | None = None,
    tensor: str = "activations",
    ddof: int = 0,
) -> NDArray[np.float32]:
    """Element-wise sum/mean/var over files' (L, H) tensors (F32/BF16/F16), float64
    accumulation, plain reads (each byte once), parallel; returns float32 (len(layers) or L, H)."""

def stack_files(
    paths: list[str | PathLike[str]],
    layers: list[int] | None = None,
    tensor: str = "activations",
) -> NDArray[np.float32]:
    """float32 (n_files, len(layers) or L, H); with `layers` only those rows are read."""

def validate_tree(path: str | PathLike[str], deep: bool = False) -> dict[str, object]:
    """Report of `pvrs validate`: {root, deep, variant_dirs, personas, files_checked,
    problems: [{path, severity, kind, message}]}."""

def persona_id_problem(persona_id: str) -> str | None:
    """Why `persona_id` is not a safe file name, or None when it is."""

def manifest_problems(raw: bytes, path: str | PathLike[str]) -> list[dict[str, str]]:
    """The problems `validate_tree` finds in the manifest bytes `raw` read from `path`
    ({path, severity, kind, message}): the one manifest check every reader applies."""
# ---- spans ----

def build_token_masks(
    offsets: NDArray[np.uint32] | NDArray[np.int64],
    lengths: NDArray[np.int64],
    spans: NDArray[np.int64],
    text_lens: NDArray[np.int64],
    strategies: Sequence[str],
    *,
    special: NDArray[np.bool_] | None = None,
    sample_ids: Sequence[str] | None = None,
    template: str = "chat template",
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
    """Token spans and strategy masks for a ragged batch (rules in `rust/spans/mod.rs`).

    `offsets` is `(n_total_tokens, 2)` (C-contiguous), `lengths` the token count per sample,
    `spans` `(n_samples, 6)` character spans `[sys_start, sys_end, q_start, q_end, a_start,
    a_end]` (system `-1, -1` when absent), `text_lens` the prompt lengths in characters,
    `special` an optional per-token special flag. Returns `masks` `(len(strategies),
    n_total_tokens)` bool, `token_spans` `(n_samples, 3, 2)` int64 `[first, end)` token
    ranges of system/question/answer (`-1, -1` when absent) and `question_special`
    `(n_samples,)` (the special token after the question, `-1` when none). Releases the GIL.
    Raises `SpanError`/`MaskError` naming the sample, `InvalidArgumentError` for bad shapes."""

# ---- hub packaging ----

def package_store(
    root: str | PathLike[str],
    out: str | PathLike[str],
    model_dirs: list[str] | None = None,
    mask_strategies: list[str] | None = None,
    row_group_bytes: int = 67108864,
    file_bytes: int = 524288000,
    progress: Callable[[int, int], object] | None = None,
) -> list[dict[str, Any]]:
    """Write `<out>/<model_dir>__<mask>/<variant>-NNNNN-of-NNNNN.parquet` and `<out>/README.md`
    from the store at `root` (all models/masks when None); one dict per split with `config`,
    `split`, `files`, `num_rows`, `num_layers`, `hidden_size`, `num_bytes`, `written_bytes`.
    `progress(advance, total)` is called with the GIL after each row group. Releases the GIL."""
