"""Vectors as other tools publish them, read as they are:

- persona-vectors (the reference tool, 0.8): `artifacts/vectors/<id>/steering_vector.safetensors`,
  one `(1, 1, H)` tensor, beside a `metadata.json` naming the layer it was taken at and the
  strength it suggests (`read_steering_vector`);
- PyTorch `.pt` files holding one tensor, or a dict with one (assistant-axis's `axis.pt`,
  `(L, H)`, row `i` the output of block `i` like pvrs's rows): `pvrs.store.vectorfiles.read_pt`, loaded with
  `torch.load(weights_only=True)` so no pickled code runs;
- assistant-axis capping configs (`capping_config.pt`): named `{layer, vector}` entries and
  experiments such as `layers_46:54-p0.25`, each a list of `{vector, cap}` upper caps
  (`capping_experiment`).

The reference (0.8.10 `persona_vectors.steering.save_steering_vector`) writes the tensor as
`steering_vector` and `metadata.json` as `{suggested_alpha, persona_id, layer, model_id,
hidden_size}`; its layer indexes the store's rows (pvrs's convention) and its alpha scales
the raw vector (`h + alpha * v`), as `pvrs steer`'s does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.errors import ArtifactError, InputError, NonFiniteError
from pvrs.jsonio import read_json
from pvrs.store.vectorfiles import STEERING_VECTOR_FILE, as_array, torch_load

METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class PublishedVector:
    """A published steering vector: `(H,)` or `(L, H)`, with the layer and strength its
    metadata suggests (None when it names none)."""

    vector: np.ndarray
    layer: int | None
    alpha: float | None
    path: Path


@dataclass(frozen=True)
class PublishedCap:
    """One upper cap of a capping experiment: projections on unit(`vector`) at block
    `layer` end at most `tau`."""

    name: str
    layer: int
    vector: np.ndarray
    tau: float


def read_metadata(folder: Path) -> dict[str, Any]:
    """`metadata.json` of a vector folder (empty when there is none)."""
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        return {}
    doc = read_json(meta_path, error=ArtifactError)
    if not isinstance(doc, dict):
        raise ArtifactError(f"{meta_path}: expected a JSON object")
    return doc


def _number(doc: dict[str, Any], keys: tuple[str, ...], kind: type, where: Path) -> Any:
    for key in keys:
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArtifactError(f"{where / METADATA_FILE}: {key!r} is {value!r}, not a number")
        if kind is int and value != int(value):
            raise ArtifactError(f"{where / METADATA_FILE}: {key!r} is {value!r}, not a layer index")
        return kind(value)
    return None


def read_steering_vector(path: str | Path) -> PublishedVector:
    """A reference vector folder (or its `steering_vector.safetensors`): the vector with its
    leading size-1 axes dropped, and the layer and alpha from `metadata.json`."""
    from pvrs.steering.directions import load_vector

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = folder / STEERING_VECTOR_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{folder} holds no {STEERING_VECTOR_FILE}")
    meta = read_metadata(folder)
    return PublishedVector(
        vector=load_vector(file),
        layer=_number(meta, ("layer",), int, folder),
        alpha=_number(meta, ("suggested_alpha",), float, folder),
        path=file,
    )


def split_capping_spec(text: str) -> tuple[Path, str | None] | None:
    """`CONFIG.pt[:EXPERIMENT]` when the text starts with an existing capping config, else
    None. Experiment ids contain colons (`layers_46:54-p0.25`), so the file is the shortest
    prefix that is a `.pt` file."""
    cuts = [i for i, ch in enumerate(text) if ch == ":"] + [len(text)]
    for i in cuts:
        prefix = Path(text[:i])
        if prefix.suffix.lower() == ".pt" and prefix.is_file():
            obj = torch_load(prefix)
            if isinstance(obj, dict) and "experiments" in obj:
                return prefix, (text[i + 1 :] or None)
            return None
    return None


def capping_experiment(path: str | Path, experiment: str | int | None = None) -> list[PublishedCap]:
    """The caps of one experiment of an assistant-axis capping config, by id or index (None:
    the only experiment). Interventions without a `cap` are skipped, as assistant-axis does."""
    path = Path(path)
    config = torch_load(path)
    try:
        experiments = list(config["experiments"])
        vectors = config["vectors"]
        ids = [str(e["id"]) for e in experiments]
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a capping config ({exc} missing)") from None
    listed = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
    if experiment is None:
        if len(ids) != 1:
            raise InputError(f"{path} holds {len(ids)} experiments; name one as {path}:ID ({listed})")
        chosen = experiments[0]
    elif isinstance(experiment, int):
        if not 0 <= experiment < len(ids):
            raise InputError(f"{path} has no experiment #{experiment} ({len(ids)} experiments)")
        chosen = experiments[experiment]
    elif experiment in ids:
        chosen = experiments[ids.index(experiment)]
    else:
        raise InputError(f"{path} has no experiment {experiment!r}; it holds {listed}")
    caps = []
    try:
        for item in chosen["interventions"]:
            if "cap" not in item:
                continue
            entry = vectors[item["vector"]]
            caps.append(
                PublishedCap(
                    name=str(item["vector"]),
                    layer=int(entry["layer"]),
                    vector=as_array(entry["vector"], path).reshape(-1),
                    tau=float(item["cap"]),
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: experiment {chosen.get('id')!r} is malformed ({exc})") from None
    if not caps:
        raise InputError(f"{path}: experiment {chosen.get('id')!r} holds no caps")
    bad = [c.name for c in caps if not (np.isfinite(c.tau) and np.isfinite(c.vector).all())]
    if bad:  # a NaN threshold or axis would turn every capped hidden state into NaN
        raise NonFiniteError(
            f"{path}: experiment {chosen.get('id')!r}: cap(s) {', '.join(bad)} hold NaN or Inf; "
            "use a config with finite vectors and caps"
        )
    return caps
