"""Typed stub of the native module `pvrs._core` (built from `rust/py.rs`).

Kept honest by `tests/test_stub.py`, which compares these names and signatures with the
compiled module."""

from os import PathLike

__version__: str

def sha256_file(path: str | PathLike[str]) -> str:
    """Streamed sha256 (lower-case hex) of a file. Releases the GIL."""

def build_info() -> dict[str, object]:
    """Version, build profile ("debug"/"release"), features and rayon thread count."""

def _panic_for_tests() -> None:
    """Panics inside Rust; raises `pvrs.InternalError`. Test-only."""
