"""llama.cpp control vectors: a GGUF with `general.architecture = "controlvector"`,
`controlvector.model_hint` (the model's architecture name), `controlvector.layer_count`
(how many directions it holds) and one 1-D F32 tensor `direction.<k>` of length
`hidden_size` per steered layer.

llama.cpp adds `direction.<k>` to the output of block `k` (0-based) at every position,
prompt included, scaled by `--control-vector-scaled FILE S` (or 1 with `--control-vector`).
That is pvrs's layer convention (row `k` is block `k`'s output), so row `k` of a vector is
written as `direction.<k>` unchanged. llama.cpp rejects `direction.0`, so block 0 cannot be
exported."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pvrs.errors import (
    ArtifactError,
    InputError,
    InvalidArgumentError,
    NonFiniteError,
    PvrsError,
)

ARCH = "controlvector"
# A direction index this high is a corrupt or hostile file, not a block: reading it would
# allocate a zero row for every block below it.
MAX_BLOCKS = 4096


def write_control_vector(
    vector: np.ndarray,
    path: str | Path,
    layers: Sequence[int],
    *,
    scale: float = 1.0,
    model_hint: str = "llama",
) -> Path:
    """Write `scale * vector[k]` as `direction.<k>` for each `k` in `layers`.

    `vector` is `(num_layers, hidden_size)` (row `k` for block `k`) or `(hidden_size,)`
    (the same direction at every chosen layer). The file is written beside `path` and
    renamed into place, so a failure never leaves a partial file."""
    import gguf

    array = np.asarray(vector, dtype=np.float32)
    if array.ndim not in (1, 2):
        raise InvalidArgumentError(f"a control vector is (H,) or (L, H), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise NonFiniteError("the vector holds NaN or Inf values; llama.cpp would propagate them")
    chosen = sorted(set(int(k) for k in layers))
    if not chosen:
        raise InvalidArgumentError("no layers to export; pass --layer K [K ...]")
    if chosen[0] < 1:
        raise InvalidArgumentError(
            "llama.cpp control vectors cannot steer block 0 (it rejects direction.0); "
            "export layers >= 1"
        )
    if array.ndim == 2 and chosen[-1] >= array.shape[0]:
        raise InvalidArgumentError(
            f"layer {chosen[-1]} is out of range for a vector with {array.shape[0]} layers"
        )
    from pvrs.store import atomic_path

    path = Path(path)
    if path.exists() and not _holds_control_vector(path):  # a model GGUF, the input vector, notes
        raise InputError(f"{path} exists and is not a control vector; pass a new .gguf path")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            writer = gguf.GGUFWriter(tmp, ARCH)
            writer.add_string(f"{ARCH}.model_hint", model_hint)
            writer.add_int32(f"{ARCH}.layer_count", len(chosen))
            for k in chosen:
                row = array[k] if array.ndim == 2 else array
                writer.add_tensor(f"direction.{k}", np.ascontiguousarray(row * np.float32(scale)))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as exc:  # a full disk is a failed write naming the file (exit 1), not a mistake
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    return path


def _holds_control_vector(path: Path) -> bool:
    try:
        read_control_vector(path)
    except PvrsError:
        return False
    return True


def read_control_vector(path: str | Path, num_layers: int | None = None) -> np.ndarray:
    """A control-vector GGUF as `(num_layers, hidden_size)` float32 (default `num_layers`:
    the highest direction index + 1); rows it has no direction for are zero."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError, IndexError, KeyError) as exc:  # counts or lengths past the end
        raise ArtifactError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != ARCH:
        found = arch.contents() if arch is not None else None
        raise ArtifactError(f"{path}: architecture is {found!r}, not a control vector ({ARCH!r})")
    kinds = gguf.GGMLQuantizationType
    floats = (kinds.F32, kinds.F16, kinds.F64)
    rows: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not (index.isascii() and index.isdigit()):
            raise ArtifactError(f"{path}: unexpected tensor {tensor.name!r}")
        if int(index) >= MAX_BLOCKS:
            raise ArtifactError(f"{path}: {tensor.name} is past any model's blocks (< {MAX_BLOCKS})")
        if tensor.tensor_type not in floats or len(tensor.shape) != 1:
            # quantized data reads as raw bytes, and a 2-D tensor is no direction
            raise ArtifactError(
                f"{path}: {tensor.name} is {tensor.tensor_type.name} of shape "
                f"{tuple(int(n) for n in tensor.shape)}; a direction is one 1-D F32 row"
            )
        rows[int(index)] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if not rows:
        raise ArtifactError(f"{path}: holds no direction.<k> tensors")
    sizes = {r.shape[0] for r in rows.values()}
    if len(sizes) != 1:
        raise ArtifactError(f"{path}: direction tensors have different lengths {sorted(sizes)}")
    count = num_layers if num_layers is not None else max(rows) + 1
    if max(rows) >= count:
        raise ArtifactError(f"{path}: has direction.{max(rows)} but the model has {count} layers")
    out = np.zeros((count, sizes.pop()), dtype=np.float32)
    for k, row in rows.items():
        out[k] = row
    return out
