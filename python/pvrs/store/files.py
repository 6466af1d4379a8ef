"""Tensor files of the store: checked float32 arrays, atomic writes, and reads through the
Rust core (memory-mapped, GIL released) or, for per-sample files, the safetensors package."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.errors import ArtifactError, InvalidArgumentError, NonFiniteError
from pvrs.store.layout import TENSOR_KEY


def as_float32(activations: Any, what: str, ndim: int) -> np.ndarray:
    """Numpy or torch input -> C-contiguous float32 numpy, checked for shape and finiteness."""
    if type(activations).__module__.startswith("torch"):
        import torch

        activations = activations.detach().to("cpu", torch.float32).numpy()
    try:
        array = np.ascontiguousarray(np.asarray(activations, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{what}: activations are not numeric ({exc})") from None
    if array.ndim != ndim or 0 in array.shape:
        expected = (
            "(num_layers, hidden_size)" if ndim == 2 else "(n_samples, num_layers, hidden_size)"
        )
        raise InvalidArgumentError(
            f"{what}: activations must have shape {expected}, got {tuple(array.shape)}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        layers = sorted({int(i) for i in np.argwhere(~finite)[:, -2]})
        raise NonFiniteError(
            f"{what}: {bad} NaN/Inf value(s) at layer(s) {layers[:10]}; nothing was saved. "
            "Check the model dtype (float16 overflows; try --dtype bfloat16 or float32)"
        )
    return array


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)



def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix:
    a temporary file in the same folder (`.<name>.<random>.tmp`), fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def safetensors_bytes(array: np.ndarray, metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    return save({TENSOR_KEY: array}, metadata=metadata)


def metadata_sample_ids(metadata: Mapping[str, str]) -> list[str] | None:
    """The sample ids `save_samples` writes into a file's metadata (None: absent or bad)."""
    try:
        ids = json.loads(metadata.get("sample_ids", "null"))
    except json.JSONDecodeError:
        return None
    return [str(s) for s in ids] if isinstance(ids, list) else None


def read_tensor(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """The "activations" tensor of one float32 file (per-sample vectors) and its metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            if TENSOR_KEY not in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                raise ArtifactError(
                    f"{path}: no {TENSOR_KEY!r} tensor; run `pvrs validate {path.parent}`"
                )
            array = handle.get_tensor(TENSOR_KEY)
    except (SafetensorError, OSError, TypeError) as exc:
        raise ArtifactError(
            f"{path}: unreadable safetensors file ({exc}); run `pvrs validate {path.parent}`"
        ) from None
    return np.asarray(array, dtype=np.float32), metadata


def stack_files(paths: Sequence[Path], layers: Sequence[int] | None) -> np.ndarray:
    """Rust: memory-mapped, parallel, GIL released; reads only the requested layers."""
    from pvrs import _core

    return _core.stack_files(
        [str(p) for p in paths], None if layers is None else [int(i) for i in layers]
    )


def mean_files(paths: Sequence[Path], layers: Sequence[int] | None) -> np.ndarray:
    from pvrs import _core

    return _core.aggregate_files(
        [str(p) for p in paths], "mean", None if layers is None else [int(i) for i in layers]
    )
