"""Tensor files of the store: checked float32 arrays, atomic writes, and reads through the
Rust core (parallel reads, GIL released) or, for per-sample files, the safetensors package."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.errors import ArtifactError, InputError, InvalidArgumentError, NonFiniteError
from pvrs.jsonio import decode
from pvrs.store.layout import LOCK_FILENAME, TENSOR_KEY

# What the Rust readers decode (upcast exactly to float32); pvrs itself writes F32.
READABLE_DTYPES = frozenset({"F32", "BF16", "F16"})


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



def file_mode() -> int:
    """The mode `open()` would give a new file: 0o666 less the umask. `mkstemp` and
    safetensors' `save_file` create 0o600 files whatever the umask, so writers chmod to this."""
    # /proc avoids os.umask's set-and-restore, during which another thread's files get mode 0o666.
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True


def _remove_dead_writers_temps(path: Path) -> None:
    """Remove temp files of `path` whose writer (the pid in their name) is dead: a kill
    mid-write left them. A store folder (it has the store lock) is cleaned under that lock
    instead, where listing it once per batch, not per file, matters."""
    folder = path.parent
    if (folder / LOCK_FILENAME).exists():
        return
    prefix = f".{path.name}."
    with contextlib.suppress(OSError), os.scandir(folder) as items:
        for item in items:
            pid = item.name.removeprefix(prefix).split(".", 1)[0]
            if (
                item.name.startswith(prefix)
                and item.name.endswith(".tmp")
                and pid.isdigit()
                and not _writer_alive(int(pid))
            ):
                with contextlib.suppress(OSError):
                    os.unlink(item.path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder (`.<name>.<pid>.<random>.tmp`) to write, then
    fsynced, given the umask's mode and renamed onto `path` (dir fsynced): readers see the
    old file or the new one, never a mix. On an error the temporary file is removed; one a
    killed writer left is removed by the next write of `path`."""
    _remove_dead_writers_temps(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def safetensors_bytes(array: np.ndarray, metadata: dict[str, str] | None = None) -> bytes:
    """The file's bytes, the same for the same array and metadata: safetensors keeps metadata
    in a hash map whose order changes between calls, so its keys are rewritten sorted."""
    import json

    from safetensors.numpy import save

    data = save({TENSOR_KEY: array}, metadata=metadata)
    if not metadata:
        return data
    n = int.from_bytes(data[:8], "little")
    parsed = json.loads(data[8 : 8 + n])
    parsed["__metadata__"] = dict(sorted(parsed["__metadata__"].items()))
    header = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def metadata_sample_ids(metadata: Mapping[str, str]) -> list[str] | None:
    """The sample ids `save_samples` writes into a file's metadata (None: absent or bad)."""
    try:
        ids = decode(metadata.get("sample_ids", "null"), "sample_ids metadata")
    except InputError:
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


def escapes(path: Path, tree: Path) -> Path | None:
    """Where `path` really leads when that is outside `tree` (None: inside). `pvrs validate`
    refuses such symlinks, so no reader follows them either."""
    target = path.resolve()
    return None if target.is_relative_to(tree.resolve()) else target


def link_problem(path: Path, tree: Path) -> str:
    """Why the symlink `path` is not read (`pvrs validate` refuses every symlinked tensor)."""
    outside = escapes(path, tree)
    if outside is not None:
        return f"symlink points outside the store (to {outside}); copy the file in instead"
    # Inside the store it is another persona's file: its vector would pass for this one's.
    return (
        f"a symbolic link (to {path.resolve()}), not a file pvrs wrote; replace it with a "
        "copy or re-extract this persona"
    )


def tensor_problem(
    path: Path, tree: Path, shape: tuple[int, int], *, deep: bool = False, sha256: str | None = None
) -> str | None:
    """Why `path` is not a persona vector readers may use (None: it is), by the rules of
    `pvrs validate` (`rust/manifest/tensor.rs`): a regular file (no symlink), a header that
    parses (which also bounds the file's size: the tensors must tile it exactly), an
    "activations" tensor of a float dtype and of `shape`; `deep` adds the checks of
    `validate --deep`: the bytes against `sha256` (if given) and no NaN/Inf.

    Measured on a (42, 3584) float32 file (602 kB): ~10 us shallow, ~1.5 ms deep (sha256
    ~0.8 ms, the scan the rest): cheap enough for resume to check every file it skips deeply;
    plain reads stay shallow (their own read is the cost that matters there)."""
    from pvrs import _core

    try:
        link = path.lstat()
    except FileNotFoundError:
        return "the tensor file is missing"
    if stat.S_ISLNK(link.st_mode):
        return link_problem(path, tree)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return "not a regular file (folder, FIFO or device)"
        header = _core.read_safetensors_header(path)
    except (ArtifactError, OSError) as exc:
        return str(exc).removeprefix(f"{path}: ").split("; re-extract or delete")[0]
    info = header["tensors"].get(TENSOR_KEY)  # type: ignore[union-attr]
    if info is None:
        return f"no {TENSOR_KEY!r} tensor"
    if info["dtype"] not in READABLE_DTYPES:
        return f"{TENSOR_KEY!r} has dtype {info['dtype']}; expected F32, BF16 or F16"
    if tuple(info["shape"]) != shape:
        return f"{TENSOR_KEY!r} has shape {tuple(info['shape'])} but the manifest says {shape}"
    if not deep:
        return None
    if sha256 is not None and _core.sha256_file(path) != sha256.lower():
        return "its sha256 differs from the manifest's: the file changed after it was saved"
    bad = int(np.count_nonzero(~np.isfinite(_core.stack_files([path]))))
    return f"{bad} NaN/Inf value(s)" if bad else None


def stack_files(paths: Sequence[Path], layers: Sequence[int] | None) -> np.ndarray:
    """Rust: parallel reads, GIL released; reads only the requested layers."""
    from pvrs import _core

    return _core.stack_files(
        [str(p) for p in paths], None if layers is None else [int(i) for i in layers]
    )


def mean_files(paths: Sequence[Path], layers: Sequence[int] | None) -> np.ndarray:
    from pvrs import _core

    return _core.aggregate_files(
        [str(p) for p in paths], "mean", None if layers is None else [int(i) for i in layers]
    )
