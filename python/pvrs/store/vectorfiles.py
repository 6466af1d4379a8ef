"""Vector files as pvrs and other tools write them, read without running their code:
`.safetensors` (a store tensor or any single-tensor file), `.npy`, PyTorch `.pt`
(`torch.load(weights_only=True)`), llama.cpp control-vector `.gguf` (`controlvector`), and
the reference tool's vector folder (`steering_vector.safetensors`). Here, below every reader
(`pvrs import`, the steering commands), so none of them imports another to read a file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.errors import ArtifactError, InputError, InvalidArgumentError, NonFiniteError, PvrsError

STEERING_VECTOR_FILE = "steering_vector.safetensors"
# Keys tried, in order, in a `.pt` dict holding more than one tensor.
PT_KEYS = ("axis", "vector", "direction", "steering_vector")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# torch's markers of a pickle weights_only refused (the first line differs across versions).
# What torch says when weights_only refuses a pickled object (new and older torch), as opposed
# to bytes that are no torch file at all (which it wraps in the same weights_only advice).
_UNSAFE_PICKLE = ("Unsupported global", "unsupported GLOBAL", "Unsupported class", "add_safe_globals")
# Tensor names tried, in order, in a multi-tensor safetensors file.
_TENSOR_NAMES = ("activations", "direction", "vector", "weight", "weights", "coef", "coef_")


def finite(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise NonFiniteError(f"{what} holds NaN or Inf values; recompute or clean it")
    return array


def torch_load(path: Path, error: type[PvrsError] = ArtifactError) -> Any:
    """`torch.load(weights_only=True)`: no pickled code runs; an unreadable or unsafe file
    raises `error` naming it."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # a refused pickle's protocol warning is no second line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise error(
            f"{path}: cannot load with torch.load(weights_only=True) ({_torch_reason(exc)}); pvrs "
            "reads .pt files of plain tensors only"
        ) from None


def _torch_reason(exc: Exception) -> str:
    """torch's reason in one plain line. Its unsafe-pickle message is many lines with ANSI
    bold and advice (weights_only=False) that is unsafe for a download: reworded, naming the
    object it refused (e.g. a numpy array in the metadata)."""
    text = _ANSI.sub("", str(exc)).strip()
    if any(marker in text for marker in _UNSAFE_PICKLE):
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        held = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{held} besides tensors, which could run code"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1) if found else f"{type(exc).__name__}: {(text.splitlines() or [''])[0]}"
    return f"it is not a readable torch file: {detail}"


def real_floats(array: np.ndarray, path: Path) -> np.ndarray:
    """`array` as float32, refused unless it holds real floats: ints may be quantized
    weights and complex values would lose their imaginary part."""
    if array.dtype.kind != "f":
        what = "not real floats" if array.dtype.kind in "biuc" else "not numbers"
        raise ArtifactError(f"{path}: holds {array.dtype} values, {what}; pass a vector of floats")
    return array.astype(np.float32)


def as_array(value: Any, path: Path) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_floating_point():  # bfloat16 has no numpy dtype
            return value.detach().to(torch.float32).numpy()
        return real_floats(value.detach().numpy(), path)
    if isinstance(value, np.ndarray):
        return real_floats(value, path)
    raise ArtifactError(f"{path}: holds a {type(value).__name__}, not a tensor")


def read_pt(path: str | Path) -> np.ndarray:
    """The tensor of a `.pt` file: the file's tensor, a dict's only tensor, or its tensor
    under one of `PT_KEYS`."""
    import torch

    path = Path(path)
    obj = torch_load(path)
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if "experiments" in obj:
            raise InputError(
                f"{path} is a capping config, not a vector; use it as --cap {path}:EXPERIMENT"
            )
        if len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            key = next((k for k in PT_KEYS if k in tensors), None)
            if key is None:
                raise ArtifactError(
                    f"{path}: holds {sorted(map(str, obj))}; pvrs reads one tensor or one named "
                    f"{', '.join(PT_KEYS)}"
                )
            obj = tensors[key]
    return as_array(obj, path)


def is_vector_folder(path: Path) -> bool:
    return path.is_dir() and (path / STEERING_VECTOR_FILE).is_file()


def _read_safetensors(path: Path) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.torch import load_file  # torch, not numpy: bfloat16 has no numpy dtype

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None
    if len(tensors) == 1:
        return as_array(next(iter(tensors.values())), path)
    if "weight" in tensors and "bias" in tensors:  # a probe's linear map: rows are classes
        return single_probe_row(as_array(tensors["weight"], path), f"the probe weights in {path}")
    for name in _TENSOR_NAMES:
        if name in tensors:
            return as_array(tensors[name], path)
    raise ArtifactError(
        f"{path}: holds tensors {sorted(tensors)}; pvrs reads a single tensor or one named "
        f"{', '.join(_TENSOR_NAMES)}"
    )


def single_probe_row(weights: Any, what: str) -> np.ndarray:
    """The one row of a probe's `(C, H)` weights; several rows are classes, never layers."""
    rows = np.atleast_2d(np.asarray(weights, dtype=np.float32))
    if rows.shape[0] != 1:
        raise InvalidArgumentError(
            f"{what} have {rows.shape[0]} weight rows (one per class, not layers); pass the row you "
            "want, e.g. probe_direction(probe.weight[k]) (pvrs.load_probe_artifact) or probe.coef_[k] (scikit-learn)"
        )
    return finite(rows[0], what)


def read_vector_file(path: str | Path) -> np.ndarray:
    """A vector file as float32 with leading size-1 axes dropped: `(H,)` or `(L, H)`. Formats
    as `pvrs.steering.directions.load_vector` lists them; a folder is a reference vector folder."""
    path = Path(path)
    if path.is_dir():
        if not is_vector_folder(path):
            raise InputError(
                f"{path} is a folder without {STEERING_VECTOR_FILE}; pass a vector file"
            )
        path = path / STEERING_VECTOR_FILE
    if not path.is_file():
        raise InputError(f"vector file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        array = _read_safetensors(path)
    elif suffix == ".npy":
        try:  # mapped, not read: a header claiming a huge shape fails here, allocating nothing
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ArtifactError(f"{path}: not a readable .npy array ({exc})") from None
    elif suffix == ".pt":
        array = read_pt(path)
    elif suffix == ".gguf":
        from pvrs.store.controlvector import read_control_vector

        array = read_control_vector(path)
    else:
        raise InputError(f"{path}: unknown vector format; use .safetensors, .npy, .pt or .gguf")
    array = real_floats(np.asarray(array), path)
    while array.ndim > 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (1, 2) or array.size == 0:
        raise ArtifactError(f"{path}: a vector is (H,) or (L, H), this file holds {array.shape}")
    return array
