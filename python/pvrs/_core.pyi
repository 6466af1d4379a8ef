"""Typed stub of the native module `pvrs._core` (built from `rust/py.rs`).

Kept honest by `tests/test_stub.py`, which compares these names and signatures with the
compiled module."""

from collections.abc import Sequence
from os import PathLike

import numpy as np
from numpy.typing import NDArray

__version__: str

def sha256_file(path: str | PathLike[str]) -> str:
    """Streamed sha256 (lower-case hex) of a file. Releases the GIL."""

def build_info() -> dict[str, object]:
    """Version, build profile ("debug"/"release"), features and rayon thread count."""

def _panic_for_tests() -> None:
    """Panics inside Rust; raises `pvrs.InternalError`. Test-only."""

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
    """Token spans and strategy masks for a ragged batch (rules in `rust/spans.rs`).

    `offsets` is `(n_total_tokens, 2)` (C-contiguous), `lengths` the token count per sample,
    `spans` `(n_samples, 6)` character spans `[sys_start, sys_end, q_start, q_end, a_start,
    a_end]` (system `-1, -1` when absent), `text_lens` the prompt lengths in characters,
    `special` an optional per-token special flag. Returns `masks` `(len(strategies),
    n_total_tokens)` bool, `token_spans` `(n_samples, 3, 2)` int64 `[first, end)` token
    ranges of system/question/answer (`-1, -1` when absent) and `question_special`
    `(n_samples,)` (the special token after the question, `-1` when none). Releases the GIL.
    Raises `SpanError`/`MaskError` naming the sample, `InvalidArgumentError` for bad shapes."""
