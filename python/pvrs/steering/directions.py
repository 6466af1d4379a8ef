"""Directions to steer, ablate, cap or monitor with, as `(num_layers, hidden_size)` float32
arrays (or one `(hidden_size,)` row with `layer=`):

- `direction(store, persona_id)`: persona minus baseline (`kind="baseline"`, pvrs's
  default), or, with `kind="biography"`, the persona's biography vector minus its templated
  one at the same persona (the reference tool's steering direction);
- `assistant_axis_direction(store)`: the baseline assistant minus the mean of the role personas,
  pointing from "playing a role" towards "being the assistant" (the assistant-axis paper);
- `probe_direction(weights)`: a linear probe's weight vector (array or file);
- `load_vector(path)`: a vector file (store `.safetensors`, any single-tensor
  `.safetensors`, `.npy`, a PyTorch `.pt`, or a llama.cpp control-vector `.gguf`), or a
  reference vector folder (`pvrs.steering.published`);
- `attribute_direction(store, key)`: a minimal-pair attribute vector of `pvrs attribute`
  (`trait_vectors/` beside the store);
- `from_spec(spec, store)`: the CLI's way to name any of these;
- contrastive vectors from two prompt sets live in `pvrs.steering.contrast`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.errors import InputError, InvalidArgumentError
from pvrs.store import BASELINE_PERSONA_ID
from pvrs.store.vectorfiles import finite, read_vector_file, single_probe_row

if TYPE_CHECKING:
    from pvrs.hub.reading import HFPersonaVectorStore
    from pvrs.store import PersonaVectorStore

    # Local or Hub: both have `load`, `stack` and `list_personas`.
    VectorStore = PersonaVectorStore | HFPersonaVectorStore

DEFAULT_VARIANT = "templated"
ASSISTANT_AXIS_SPECS = ("assistant-axis", "assistant_axis", "assistant")
# `direction(kind=...)`: persona minus `against`, or biography minus templated.
DIRECTION_KINDS = ("baseline", "biography")
BIOGRAPHY_SPEC_PREFIX = "biography:"
ATTRIBUTE_SPEC_PREFIX = "attribute:"
PROBE_WEIGHTS_FILE = "weights.safetensors"  # inside a saved probe artifact folder
PROBE_JSON = "probe.json"


def _select_layer(array: np.ndarray, layer: int | None, what: str) -> np.ndarray:
    if layer is None:
        return array
    if array.ndim != 2:
        raise InvalidArgumentError(f"{what} has shape {array.shape}; layer= needs (L, H)")
    if not -array.shape[0] <= layer < array.shape[0]:
        raise InvalidArgumentError(
            f"layer {layer} is out of range for {what} with {array.shape[0]} layers"
        )
    return array[layer]


def direction(
    store: VectorStore,
    persona_id: str,
    against: str = BASELINE_PERSONA_ID,
    layer: int | None = None,
    variant: str = DEFAULT_VARIANT,
    kind: str = "baseline",
) -> np.ndarray:
    """A persona's direction, computed in float64: `(L, H)`, or row `layer` as `(H,)`.

    `kind="baseline"`: `store.load(persona_id, variant) - store.load(against, variant)`;
    adding it steers towards the persona. `kind="biography"`: the persona's `biography`
    vector minus its `templated` one (`against` and `variant` do not apply), the reference
    tool's steering direction: what the long description adds over the short one."""
    if kind == "baseline":
        diff = store.load(persona_id, variant).astype(np.float64) - store.load(against, variant)
        what = f"the direction {persona_id!r} - {against!r}"
    elif kind == "biography":
        diff = store.load(persona_id, "biography").astype(np.float64) - store.load(
            persona_id, "templated"
        )
        what = f"the direction biography - templated of {persona_id!r}"
    else:
        raise InvalidArgumentError(
            f"kind={kind!r} is not one of {', '.join(map(repr, DIRECTION_KINDS))}"
        )
    return _select_layer(finite(diff.astype(np.float32), what), layer, what)


def assistant_axis_direction(
    store: VectorStore,
    roles: Sequence[str] | None = None,
    layer: int | None = None,
    variant: str = DEFAULT_VARIANT,
    baseline: str = BASELINE_PERSONA_ID,
) -> np.ndarray:
    """`baseline - mean(roles)` (default roles: every saved persona except the baseline),
    the `pvrs.analysis.assistant_axis` definition, unnormalised.
    Projections grow towards the assistant; a conversation drifting into a role shows as
    falling projections, and `cap(..., side="lower")` keeps them from falling too far."""
    from pvrs.analysis.compute import assistant_axis as axis_of

    ids = store.list_personas([variant]) if roles is None else list(roles)
    ids = [baseline, *(pid for pid in ids if pid != baseline)]
    if len(ids) < 2:
        raise InvalidArgumentError(
            f"the assistant axis needs role personas besides {baseline!r} in "
            f"{store.location(variant)}; extract some personas first"
        )
    vectors = store.stack(ids, variant)
    result = axis_of(vectors, ids, list(range(vectors.shape[1])), default_ids=(baseline,))
    # `pvrs.analysis.compute` gives unit rows and their lengths; steering wants the raw difference.
    axis = (result.axis * result.norm[:, None]).astype(np.float32)
    return _select_layer(finite(axis, "the assistant axis"), layer, "the axis")


def attribute_direction(store: VectorStore, key: str, variant: str = DEFAULT_VARIANT) -> np.ndarray:
    """The attribute vector `key` (`sex`, `age_band=older`) of the store's model from the trait
    vector store beside it (`<artifacts>/trait_vectors` for a local store under
    `<artifacts>/activations`, else `$ARTIFACTS_DIR/trait_vectors`): the store's mask strategy,
    or the one strategy folder holding `key` (attribute vectors pool the persona prompt)."""
    from pvrs.store.traits import TRAIT_VECTORS_DIR, TraitVectorStore, trait_vectors_dir

    local = getattr(store, "root_dir", None)
    root = Path(local).parent / TRAIT_VECTORS_DIR if local is not None else trait_vectors_dir()
    own = TraitVectorStore(store.model_name, root, getattr(store, "mask_strategy", None))
    folders = [own] if key in own.list_attributes(variant) else []
    model_dir = own.variant_dir(variant).parent.parent
    if not folders and model_dir.is_dir():
        folders = [
            t for t in (TraitVectorStore(store.model_name, root, d.name) for d in sorted(model_dir.iterdir()) if d.is_dir())
            if key in t.list_attributes(variant)
        ]
    if len(folders) != 1:
        where = f"in {len(folders)} mask strategies ({', '.join(t.mask_strategy for t in folders)}): pass --mask-strategy" if folders else (
            f"in {model_dir}: run `pvrs attribute --attribute {key.split('=')[0]}` for this model first"
        )
        raise InputError(f"{ATTRIBUTE_SPEC_PREFIX}{key}: no single attribute vector {key!r} {where}")
    return finite(folders[0].load(key, variant), f"{ATTRIBUTE_SPEC_PREFIX}{key}")


def load_vector(
    path: str | Path, layer: int | None = None, *, num_layers: int | None = None
) -> np.ndarray:
    """A vector file as float32: `.safetensors` (a store tensor, or any file with a single
    tensor), `.npy`, `.pt` (`torch.load(weights_only=True)`), or a control-vector `.gguf`
    (rows for layers it lacks are zero); a folder is read as a reference vector folder
    (its `steering_vector.safetensors`). Leading axes of size 1 (a binary probe's `(1, H)`
    weights, the reference's `(1, 1, H)` steering vector) are dropped; a probe's per-class
    `(C, H)` weights (tensors `weight` and `bias`) are refused, not read as layers.

    With the model's `num_layers`, a file of `num_layers + 1` rows (Anthropic's
    persona_vectors: `output_hidden_states`, embeddings first and the final norm's output
    last) is read as block rows (`as_block_rows`), with a warning naming the rows used."""
    array = read_vector_file(path)
    if num_layers is not None:
        array, layer = as_block_rows(array, num_layers, path, layer)
    return _select_layer(finite(array, str(path)), layer, str(path))


def as_block_rows(
    array: np.ndarray, num_layers: int, path: str | Path, layer: int | None = None
) -> tuple[np.ndarray, int | None]:
    """`array` in pvrs's rows (row i = block i) and `layer` as a block index (-1: the
    model's last block). Only a `(num_layers + 1, H)` array changes: transformers'
    `output_hidden_states` rows, whose row i+1 is block i and whose last row is the final
    norm's output, not block L-1's: a `layer` naming that block is refused."""
    from pvrs.store.importers import block_rows, hidden_states_note

    if array.ndim != 2 or array.shape[0] != num_layers + 1:
        return array, layer
    if layer is not None and layer < 0:
        layer += num_layers
    if layer == num_layers - 1:
        raise InvalidArgumentError(
            f"{path} holds no output of block {layer}: its row {num_layers} is the final norm's "
            "output (transformers' output_hidden_states); choose an earlier layer"
        )
    used = f"layer {layer} is its row {layer + 1}; " if layer is not None and 0 <= layer < num_layers else ""
    warnings.warn(
        f"{path}: {num_layers + 1} rows for a {num_layers}-layer model, read as "
        f"output_hidden_states (row i+1 is block i): {used}{hidden_states_note(num_layers)}",
        stacklevel=3,
    )
    return block_rows(array, Path(path)), layer


def probe_direction(weights: Any, layer: int | None = None) -> np.ndarray:
    """A linear probe's weights as a direction: an array, a fitted scikit-learn linear model
    (its `coef_`), a `pvrs.analysis.probe_artifacts.ProbeArtifact` (its `weight`), a probe artifact folder
    (its `weights.safetensors`), or a file readable by `load_vector`. Projections on it
    grow with the probe's score (for a two-class probe, towards its second class)."""
    if isinstance(weights, (str, Path)):
        path = Path(weights)
        if path.is_dir():  # a saved probe: its class rows are checked like a fitted one's
            from pvrs.analysis.probe_artifacts import load_probe_artifact

            return probe_direction(load_probe_artifact(path))
        return load_vector(path, layer)
    fitted = getattr(weights, "coef_", None)
    if fitted is None:
        fitted = getattr(weights, "weight", None)
    if fitted is not None:  # a fitted probe: one row per class, one row for two classes
        return single_probe_row(fitted, "the probe weights")
    array = np.asarray(weights, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    return _select_layer(finite(array, "the probe weights"), layer, "the probe weights")


def from_spec(
    spec: str, store: VectorStore | None, variant: str = DEFAULT_VARIANT
) -> np.ndarray:
    """Resolve a CLI vector spec: an existing file or vector folder (`load_vector`; an
    `output_hidden_states` file of the store's model becomes block rows), a probe
    artifact folder (`probe_direction`), `assistant-axis`, `biography:ID` (the persona's
    biography minus templated vector), `attribute:KEY` (`attribute_direction`) or a persona
    id (persona minus baseline from `store`)."""
    path = Path(spec)
    if path.is_dir() and (path / PROBE_JSON).is_file():
        return probe_direction(path)
    if path.is_file() or path.is_dir():
        array = load_vector(path)
        if array.ndim == 2 and store is not None:  # the store's model tells the file's rows
            from pvrs.store.importers import model_num_layers

            num_layers = model_num_layers(store.model_name)
            if num_layers is not None:
                array, _ = as_block_rows(array, num_layers, path)
        return array
    if path.is_symlink():  # its target is missing (or a loop): not a persona id either
        raise InputError(f"{spec!r} is a symbolic link to {str(path.readlink())!r}, which is no file; refused: "
                         "pass the vector file itself")
    if store is None:
        raise InputError(f"{spec!r} is not a file, and no store was given to look it up in")
    if spec in ASSISTANT_AXIS_SPECS:
        return assistant_axis_direction(store, variant=variant)
    if spec.startswith(ATTRIBUTE_SPEC_PREFIX):
        return attribute_direction(store, spec[len(ATTRIBUTE_SPEC_PREFIX) :], variant)
    if spec.startswith(BIOGRAPHY_SPEC_PREFIX):
        persona_id = spec[len(BIOGRAPHY_SPEC_PREFIX) :]
        missing = [v for v in ("biography", "templated") if not store.has(persona_id, v)]
        if missing:
            raise InputError(
                f"{spec!r} needs {persona_id!r} saved as biography and templated; "
                f"{' and '.join(missing)} missing in {store.location(missing[0])}: extract "
                f"it with --variants biography templated"
            )
        return direction(store, persona_id, kind="biography")
    # Recorded is enough here: a recorded file that cannot be read fails in `direction`,
    # naming what is wrong with it.
    if spec not in store.list_personas([variant], include_baseline=True):
        raise InputError(
            f"{spec!r} is neither a vector file nor a persona saved in "
            f"{store.location(variant)}; run `pvrs extract` for it, pass a .safetensors/"
            f".npy/.pt/.gguf file, or use 'assistant-axis', 'biography:ID' or 'attribute:KEY'"
        )
    return direction(store, spec, variant=variant)
