"""The trait vector store of persona-vectors main (`trait_vectors/`), read and written: one
`(num_layers, hidden_size)` mean minimal-pair delta per attribute direction in
`<root>/<model_dir>/<mask_strategy>/<variant>/<attribute>.safetensors` (tensor
`activations`, row i block i), beside a manifest `{num_layers, hidden_size, attributes:
{attribute: contrast metadata}}`. The reference writes the entry `value_from`, `value_to`,
`n_personas`, `auc_by_layer` and `act_norm_by_layer` (per-layer maps keyed by the layer as
text); pvrs adds what it needs for its report beside them. Reads carry pvrs's checks (safe
ids, regular files inside the root, tensors of the manifest's shape); writes are atomic under
the folder's lock, like the persona vector store's."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.engines.models import model_dir_name
from pvrs.errors import ArtifactError, ManifestError
from pvrs.paths import artifacts_dir
from pvrs.store.files import (
    as_float32,
    atomic_write_bytes,
    safetensors_bytes,
    stack_files,
    tensor_problem,
)
from pvrs.store.layout import (
    DEFAULT_MASK_STRATEGY,
    MANIFEST_FILENAME,
    SUPPORTED_VARIANTS,
    TENSOR_SUFFIX,
    VectorNotFoundError,
    folder_name,
    strategy_name,
    validate_persona_id,
)
from pvrs.store.local import _write_lock

TRAIT_VECTORS_DIR = "trait_vectors"  # beside `activations/` under the artifacts folder
ITEM_KEY = "attributes"


def trait_vectors_dir() -> Path:
    """The default root: `$ARTIFACTS_DIR/trait_vectors`."""
    return artifacts_dir() / TRAIT_VECTORS_DIR


class TraitVectorStore:
    """One model's trait vectors under `root_dir` (default `$ARTIFACTS_DIR/trait_vectors`),
    one mask strategy; numpy in and out."""

    def __init__(
        self,
        model_name: str,
        root_dir: str | os.PathLike[str] | None = None,
        mask_strategy: object | None = DEFAULT_MASK_STRATEGY,
        variants: Sequence[str] = SUPPORTED_VARIANTS,
    ) -> None:
        self.model_name = model_name
        self.mask_strategy = strategy_name(mask_strategy)
        self.variants = tuple(variants)
        self.root_dir = Path(root_dir).expanduser() if root_dir is not None else trait_vectors_dir()

    def variant_dir(self, variant: str) -> Path:
        return (
            self.root_dir
            / model_dir_name(self.model_name)
            / folder_name(self.mask_strategy, "mask strategy")
            / folder_name(variant, "variant")
        )

    def tensor_path(self, attribute: str, variant: str) -> Path:
        return self.variant_dir(variant) / f"{validate_persona_id(attribute)}{TENSOR_SUFFIX}"

    def read_manifest(self, variant: str) -> dict[str, Any] | None:
        """The variant's manifest, its fields checked (None: no such folder)."""
        from pvrs.jsonio import decode
        from pvrs.store.manifest import read_manifest_bytes

        path = self.variant_dir(variant) / MANIFEST_FILENAME
        raw = read_manifest_bytes(path)
        if raw is None:
            return None
        doc = decode(raw, str(path), ManifestError)
        items = doc.get(ITEM_KEY) if isinstance(doc, dict) else None
        counts = [doc.get(k) if isinstance(doc, dict) else None for k in ("num_layers", "hidden_size")]
        if not isinstance(items, dict) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts
        ):
            raise ManifestError(
                f"{path}: not a trait vector manifest {{num_layers, hidden_size, attributes: {{...}}}}"
            )
        for attribute, entry in items.items():
            validate_persona_id(attribute)
            if not isinstance(entry, dict):
                raise ManifestError(f"{path}: attributes[{attribute!r}] must be an object")
        return doc

    def _entry(self, attribute: str, variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
        manifest = self.read_manifest(variant)
        if manifest is None or attribute not in manifest[ITEM_KEY]:
            raise VectorNotFoundError(
                f"no trait vector for {self.model_name!r} / {variant!r} / {attribute!r} in {self.variant_dir(variant)}"
            )
        return manifest, manifest[ITEM_KEY][attribute]

    def load(self, attribute: str, variant: str = "templated") -> np.ndarray:
        """The attribute's `(num_layers, hidden_size)` mean delta, float32."""
        manifest, _ = self._entry(attribute, variant)
        path = self.tensor_path(attribute, variant)
        problem = tensor_problem(path, self.root_dir, (manifest["num_layers"], manifest["hidden_size"]))
        if problem:
            raise ArtifactError(f"{path}: {problem}")
        return stack_files([path], None)[0]

    def metadata(self, attribute: str, variant: str = "templated") -> dict[str, Any]:
        """The attribute's contrast metadata (`value_from`, `value_to`, `auc_by_layer`, ...)."""
        return self._entry(attribute, variant)[1]

    def list_attributes(self, variant: str = "templated") -> list[str]:
        manifest = self.read_manifest(variant)
        return [] if manifest is None else sorted(manifest[ITEM_KEY])

    def available_variants(self, variants: Sequence[str] | None = None) -> list[str]:
        return [v for v in (self.variants if variants is None else variants) if self.list_attributes(v)]

    def save(self, attribute: str, delta: Any, entry: Mapping[str, Any], variant: str = "templated") -> Path:
        """Write `attribute`'s mean delta and its manifest entry (replacing an earlier one);
        a folder holding vectors of another shape refuses it. Returns the tensor's path."""
        array = as_float32(delta, f"trait vector {attribute!r}", 2)
        path = self.tensor_path(attribute, variant)
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        with _write_lock(folder):
            manifest = self.read_manifest(variant) or {
                "num_layers": array.shape[0], "hidden_size": array.shape[1], ITEM_KEY: {},
            }
            if (manifest["num_layers"], manifest["hidden_size"]) != array.shape:
                raise ArtifactError(
                    f"{folder}: holds trait vectors of shape ({manifest['num_layers']}, {manifest['hidden_size']}), "
                    f"not {array.shape}; give another output folder for this model"
                )
            atomic_write_bytes(path, safetensors_bytes(array))
            manifest[ITEM_KEY][attribute] = dict(entry)
            atomic_write_bytes(folder / MANIFEST_FILENAME, json.dumps(manifest, indent=2).encode())
        return path
