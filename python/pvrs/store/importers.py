"""Import persona vectors made by other tools into a pvrs store.

- `.pt` files holding one `[L+1, d]` tensor, one row per entry of transformers'
  `output_hidden_states` (Anthropic's persona_vectors `generate_vec.py`), or `[L, d]`
  (decoder blocks only), loaded with `torch.load(weights_only=True)` so no pickled code runs.
  In `output_hidden_states` row 0 is the embeddings, row i the output of block i-1, and row L
  the final norm applied to block L-1's output (transformers normalises the last entry), which
  is no block's output: such a file keeps rows 1..L-1 as blocks 0..L-2 (`block_rows`).
- `.gguf` llama.cpp control vectors: `direction.<k>` is added to block k's output, so it is
  row k as it is; layers the file does not steer are zero rows.

pvrs stores decoder-block rows only (DESIGN.md "Layer convention"); the source layout is
recorded in the manifest as `source_layer_convention`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvrs.errors import InputError
from pvrs.store import LAYER_CONVENTION, PersonaVectorStore, VectorRecord, validate_persona_id

WITH_EMBEDDINGS = "hidden_states_embeddings_blocks_final_norm"
CONTROL_VECTOR = "llama_cpp_control_vector"
SUFFIXES = (".pt", ".gguf")
LAYOUTS = ("auto", "with-embeddings", "blocks")
_TENSOR_KEYS = ("activations", "vector", "vectors", "persona_vector")


@dataclass(frozen=True)
class ImportResult:
    variant_dir: Path
    persona_ids: list[str]
    source_layer_convention: str
    num_layers: int
    hidden_size: int


def vector_files(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders to the `.pt` and `.gguf` files directly inside them; keep files as given."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{path}: no .pt or .gguf files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def load_pt_vector(path: Path) -> Any:
    """The 2-D tensor in a `.pt` file: a bare tensor, or a dict with one tensor (or an
    `activations`/`vector` entry)."""
    import torch

    from pvrs.store.vectorfiles import torch_load

    obj = torch_load(path, InputError)
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        key = next((k for k in _TENSOR_KEYS if k in tensors), None)
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None:
            raise InputError(
                f"{path}: a dict with keys {sorted(map(str, obj))[:8]}; expected one tensor or "
                f"one of {list(_TENSOR_KEYS)}"
            )
        obj = tensors[key]
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        what = f"shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise InputError(f"{path}: expected a 2-D [layers, hidden] tensor, got {what}")
    if not obj.is_floating_point():  # ints may be quantized; complex would lose its imaginary part
        raise InputError(f"{path}: holds {obj.dtype} values, not real floats; import a float tensor")
    return obj


def model_num_layers(model: str) -> int | None:
    """`num_hidden_layers` from the model's config, or None when it cannot be read. The
    built-in's Hub id reads its converted folder (same config), not the network."""
    from pvrs.engines.models import builtin_model, ensure_builtin, resolve_model_path

    try:
        from transformers import AutoConfig

        builtin = builtin_model(model)
        path = str(ensure_builtin(builtin)) if builtin else resolve_model_path(model)
        config = AutoConfig.from_pretrained(path)
    except Exception:  # offline, unknown id, no config: the caller asks for --num-layers
        return None
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", None)
    return int(layers) if isinstance(layers, int) else None


def block_rows(rows: Any, path: Path) -> Any:
    """The block rows of an `output_hidden_states` `[L+1, d]` array or tensor: rows 1..L-1,
    blocks 0..L-2. Row 0 (embeddings) and row L (the final norm's output) are dropped."""
    if len(rows) < 3:
        raise InputError(
            f"{path}: {len(rows)} rows of output_hidden_states hold no block output besides the final "
            "norm's; there is nothing to read as a block's vector"
        )
    return rows[1:-1]


def hidden_states_note(num_layers: int) -> str:
    """What reading an `[L+1, d]` file as `output_hidden_states` does, in words."""
    return (
        f"row 0 (embeddings) and row {num_layers} (the final norm's output, not block "
        f"{num_layers - 1}'s) are dropped"
    )


def _source_layout(rows: int, layout: str, num_layers: int | None, path: Path) -> str:
    if layout == "with-embeddings":
        return WITH_EMBEDDINGS
    if layout == "blocks":
        return LAYER_CONVENTION
    if num_layers is None:
        raise InputError(
            f"{path}: cannot tell whether its {rows} rows include the embedding row; pass "
            "--num-layers N (the model's decoder layers) or --layout with-embeddings|blocks"
        )
    if rows == num_layers + 1:
        return WITH_EMBEDDINGS
    if rows == num_layers:
        return LAYER_CONVENTION
    raise InputError(
        f"{path}: {rows} rows, but the model has {num_layers} layers (expected {num_layers} "
        f"or {num_layers + 1} with the embedding row); check --model or --num-layers"
    )


def _load(path: Path, layout: str, num_layers: int | None) -> tuple[Any, str, str | None]:
    """The file's `(L, d)` float32 tensor in pvrs's layer convention, its source layout and
    its source dtype."""
    import torch

    if path.suffix == ".gguf":
        from pvrs.store.controlvector import read_control_vector

        if num_layers is None:
            raise InputError(
                f"{path}: a control vector holds only the layers it steers; pass --num-layers N "
                "(the model's decoder layers) so the stored vector has one row per block"
            )
        # dtype None: the file's tensor type is not kept (read as float32).
        return torch.from_numpy(read_control_vector(path, num_layers)), CONTROL_VECTOR, None
    tensor = load_pt_vector(path)
    convention = _source_layout(int(tensor.shape[0]), layout, num_layers, path)
    dtype = str(tensor.dtype).removeprefix("torch.")
    if convention == WITH_EMBEDDINGS:
        tensor = block_rows(tensor, path)
    return tensor.to(torch.float32), convention, dtype


def _check_same_kind(store: PersonaVectorStore, variant: str, convention: str) -> None:
    """Control vectors are directions, not mean activations: the two never share a folder
    (its manifest describes one kind, and analysis and `direction()` assume means)."""
    manifest = store.read_manifest(variant)
    if not manifest or not manifest.get("personas"):
        return
    held_control = manifest.get("source_layer_convention") == CONTROL_VECTOR
    if held_control != (convention == CONTROL_VECTOR):
        held = "llama.cpp control vectors" if held_control else "persona vectors (mean activations)"
        raise InputError(
            f"{store.location(variant)} already holds {held}; import "
            f"{'control vectors' if convention == CONTROL_VECTOR else 'these vectors'} into another "
            "store (--output-dir DIR) or another --variant"
        )


def import_vectors(
    inputs: Sequence[str | os.PathLike[str]],
    store: PersonaVectorStore,
    variant: str,
    *,
    layout: str = "auto",
    num_layers: int | None = None,
    names: dict[str, str] | None = None,
    force: bool = False,
) -> ImportResult:
    """Import `.pt` vectors or `.gguf` control vectors (persona id = file stem) into `store`
    under `variant`, with one manifest update. Every file is loaded and checked before
    anything is written; personas the variant already holds are replaced only with `force`."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    files = vector_files(inputs)
    if not files:
        raise InputError("no .pt or .gguf files given; pass files or folders holding them")
    if layout != "auto" and any(f.suffix == ".gguf" for f in files):
        raise InputError("--layout is for .pt files; a .gguf control vector names its blocks itself")
    if num_layers is None and (layout == "auto" or any(f.suffix == ".gguf" for f in files)):
        num_layers = model_num_layers(store.model_name)
    records: list[VectorRecord] = []
    conventions: set[str] = set()
    dtypes: set[str | None] = set()
    for path in files:
        persona_id = validate_persona_id(path.stem)
        tensor, convention, dtype = _load(path, layout, num_layers)
        conventions.add(convention)
        dtypes.add(dtype)
        records.append(
            VectorRecord(
                persona_id=persona_id,
                activations=tensor,
                name=(names or {}).get(persona_id, persona_id),
                sample_ids=[],
            )
        )
    if len(conventions) > 1:
        raise InputError(
            f"the files mix layouts ({', '.join(sorted(conventions))}); import each kind "
            "separately (with --layout for .pt files)"
        )
    convention = conventions.pop()
    _check_same_kind(store, variant, convention)
    held = [r.persona_id for r in records if store.has(r.persona_id, variant)]
    if held and not force:  # an extracted vector took GPU time; a same-named download must not replace it
        raise InputError(
            f"{store.location(variant)} already holds {', '.join(held[:8])}{' ...' if len(held) > 8 else ''}; "
            "pass --force to replace them, or import into another --variant or --output-dir"
        )
    provenance = {
        "layer_convention": LAYER_CONVENTION,
        "source_layer_convention": convention,
        "imported_from": "llama.cpp control vector (.gguf)" if convention == CONTROL_VECTOR else "torch .pt",
        "dtype": dtypes.pop() if len(dtypes) == 1 else None,
    }
    store.save_many(variant, records, provenance=provenance)
    first = records[0].activations
    return ImportResult(
        variant_dir=store.variant_dir(variant),
        persona_ids=[r.persona_id for r in records],
        source_layer_convention=convention,
        num_layers=int(first.shape[0]),
        hidden_size=int(first.shape[1]),
    )
