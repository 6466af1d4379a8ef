"""Typed stub of the native module `pvrs._core` (built from `rust/py.rs`).

Kept honest by `tests/test_stub.py`, which compares these names and signatures with the
compiled module."""

from collections.abc import Callable
from os import PathLike
from typing import Any

__version__: str

def sha256_file(path: str | PathLike[str]) -> str:
    """Streamed sha256 (lower-case hex) of a file. Releases the GIL."""

def build_info() -> dict[str, object]:
    """Version, build profile ("debug"/"release"), features and rayon thread count."""

def _panic_for_tests() -> None:
    """Panics inside Rust; raises `pvrs.InternalError`. Test-only."""

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
