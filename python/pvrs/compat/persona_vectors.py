"""The reference tool's store API (`persona_vectors.artifacts`, 0.8) over pvrs's store, so a
script written for it runs on a pvrs store by changing its import:

    from pvrs.compat.persona_vectors import PersonaVectorStore, activation_config_name

`HFPersonaVectorStore(repo_id, model_name, mask_strategy)` is the reference's Hub reader over
pvrs's (`pvrs.hub.HFPersonaVectorStore`): bound to one mask strategy (another raises
ValueError, as there), torch tensors, no warning about missing variants unless asked, and
every split by default. `discover_activation_models` is pvrs's own (same signature).
`TraitVectorStore` reads and writes persona-vectors main's trait vector store (`trait_vectors/`,
one mean swap delta per attribute, its manifest keyed `attributes`), as `pvrs attribute` does.

Same argument order and semantics as the reference: `load(prompt_variant, persona_id,
mask_strategy=None)` returns a torch tensor and raises `FileNotFoundError` when nothing is
saved; `list_personas(variants, mask_strategy=, warn_missing=, include_baseline=)` warns
when personas miss a requested variant; `persona_sample_ids` returns None when unknown; every
method takes a per-call `mask_strategy`. Behind it is one `pvrs.PersonaVectorStore` per mask
strategy (`store(mask_strategy)`), so checks, atomic writes and provenance are pvrs's.
pvrs's own API differs on purpose: `PersonaVectorStore.load(persona_id, variant)` returns
numpy, and a pvrs store is bound to one mask strategy."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from pvrs.engines.models import model_dir_name
from pvrs.errors import InvalidArgumentError
from pvrs.store import PersonaVectorStore as _PvrsStore
from pvrs.store import discover_activation_models
from pvrs.store.layout import (
    DEFAULT_MASK_STRATEGY,
    SUPPORTED_VARIANTS,
    strategy_name,
)
from pvrs.store.queries import PersonaQueries
from pvrs.store.traits import TraitVectorStore as _TraitStore

__all__ = [
    "DEFAULT_MASK_STRATEGY",
    "HFPersonaVectorStore",
    "PersonaVectorStore",
    "TraitVectorStore",
    "activation_config_name",
    "discover_activation_models",
    "model_dir_name",
    "normalize_mask_strategy",
]


def normalize_mask_strategy(mask_strategy: object | None) -> str:
    """A mask strategy's folder name (`MaskStrategy` members or strings; None: the default)."""
    return strategy_name(mask_strategy)


def activation_config_name(model_name: str, mask_strategy: object | None = DEFAULT_MASK_STRATEGY) -> str:
    """The Hub dataset config of a model's vectors: `<model_dir>__<mask_strategy>`."""
    return f"{model_dir_name(model_name)}__{normalize_mask_strategy(mask_strategy)}"


def _shared_personas(
    store: PersonaQueries, requested: Sequence[str], warn_missing: bool, include_baseline: bool
) -> list[str]:
    """Persona ids saved in every requested variant; with `warn_missing`, the reference's
    warning counting the personas some variant lacks."""
    shared = store.list_personas(requested, include_baseline=include_baseline)
    if warn_missing and len(requested) > 1 and shared:
        each = [set(store.list_personas([v], include_baseline=True)) for v in requested]
        skipped = len(set.union(*each) - set.intersection(*each))
        if skipped:
            warnings.warn(
                f"Skipping {skipped} persona(s) missing one or more requested variants.",
                stacklevel=3,
            )
    return shared


S = TypeVar("S", _PvrsStore, _TraitStore)


class _PerStrategy(Generic[S]):
    """The reference's constructor over one pvrs store per mask strategy, opened on first use."""

    _store_class: type[S]

    def __init__(
        self,
        model_name: str,
        root_dir: str | os.PathLike[str] | None = None,
        mask_strategy: object | None = DEFAULT_MASK_STRATEGY,
        variants: Sequence[str] = SUPPORTED_VARIANTS,
    ) -> None:
        self.model_name = model_name
        self.mask_strategy = mask_strategy
        self.variants = tuple(variants)
        self._root = root_dir
        self._stores: dict[str, S] = {}
        self.root_dir = self.store().root_dir

    def store(self, mask_strategy: object | None = None) -> S:
        """The pvrs store behind one mask strategy (default: this store's)."""
        name = normalize_mask_strategy(self.mask_strategy if mask_strategy is None else mask_strategy)
        if name not in self._stores:
            self._stores[name] = self._store_class(self.model_name, self._root, name, self.variants)
        return self._stores[name]


class PersonaVectorStore(_PerStrategy[_PvrsStore]):
    """`persona_vectors.artifacts.PersonaVectorStore`'s methods over pvrs stores."""

    _store_class = _PvrsStore

    def save(
        self,
        prompt_variant: str,
        persona_id: str,
        persona_name: str,
        vectors: Any,
        sample_ids: list[str],
        mask_strategy: object | None = None,
    ) -> Path:
        """Save a `(num_layers, hidden_size)` tensor; returns the variant folder."""
        store = self.store(mask_strategy)
        store.save(persona_id, prompt_variant, vectors, name=persona_name, sample_ids=sample_ids)
        return store.variant_dir(prompt_variant)

    def load(self, prompt_variant: str, persona_id: str, mask_strategy: object | None = None) -> Any:
        """The `(num_layers, hidden_size)` vector as a float32 torch tensor;
        `FileNotFoundError` (pvrs's `VectorNotFoundError`) when none is saved."""
        import torch

        return torch.from_numpy(self.store(mask_strategy).load(persona_id, prompt_variant))

    def list_personas(
        self,
        variants: Sequence[str] | None = None,
        mask_strategy: object | None = None,
        warn_missing: bool = True,
        *,
        include_baseline: bool = False,
    ) -> list[str]:
        """Persona ids saved in every requested variant (baseline hidden unless asked for);
        with `warn_missing`, a warning counts the personas some variant lacks."""
        requested = self.variants if variants is None else tuple(variants)
        return _shared_personas(self.store(mask_strategy), requested, warn_missing, include_baseline)

    def persona_sample_ids(
        self, prompt_variant: str, persona_id: str, mask_strategy: object | None = None
    ) -> list[str] | None:
        """The persona's sample ids from the manifest, or None when unknown."""
        manifest = self.store(mask_strategy).read_manifest(prompt_variant)
        entry = None if manifest is None else manifest["personas"].get(persona_id)
        ids = entry.get("sample_ids") if isinstance(entry, dict) else None
        return [str(i) for i in ids] if isinstance(ids, list) else None

    def persona_names(
        self,
        persona_ids: Sequence[str],
        variants: Sequence[str] | None = None,
        mask_strategy: object | None = None,
    ) -> dict[str, str]:
        return self.store(mask_strategy).persona_names(persona_ids, variants)

    def list_layers(
        self,
        variants: Sequence[str],
        persona_ids: Sequence[str] | None = None,
        mask_strategy: object | None = None,
    ) -> list[int]:
        return self.store(mask_strategy).list_layers(variants, persona_ids)

    def available_variants(
        self, variants: Sequence[str] | None = None, mask_strategy: object | None = None
    ) -> list[str]:
        return self.store(mask_strategy).available_variants(variants)


class HFPersonaVectorStore:
    """`persona_vectors.artifacts.HFPersonaVectorStore`'s methods over pvrs's Hub reader
    (`store`): a Hub dataset id or a local packaged folder, one mask strategy."""

    def __init__(
        self, repo_id: str, model_name: str, mask_strategy: object | None = DEFAULT_MASK_STRATEGY
    ) -> None:
        from pvrs.hub import HFPersonaVectorStore as _HubStore

        self.repo_id = repo_id
        self.model_name = model_name
        self.mask_strategy = normalize_mask_strategy(mask_strategy)
        self.config_name = activation_config_name(model_name, self.mask_strategy)
        self.store = _HubStore(repo_id, model_name, self.mask_strategy)

    def _check(self, mask_strategy: object | None) -> None:
        if mask_strategy is not None and normalize_mask_strategy(mask_strategy) != self.mask_strategy:
            raise InvalidArgumentError(
                f"HFPersonaVectorStore is bound to mask_strategy={self.mask_strategy!r}; got "
                f"{mask_strategy!r} (open another store for it)"
            )

    def release_cache(self, variants: Sequence[str] | None = None) -> None:
        """Drop cached indexes and vectors (all variants: pvrs caches them together)."""
        self.store.release_cache()

    def available_variants(
        self, variants: Sequence[str] | None = None, mask_strategy: object | None = None
    ) -> list[str]:
        """Requested variants (default: every split of the config) holding a persona."""
        self._check(mask_strategy)
        return self.store.available_variants(self.store.splits() if variants is None else variants)

    def load(self, prompt_variant: str, persona_id: str, mask_strategy: object | None = None) -> Any:
        """The `(num_layers, hidden_size)` vector as a float32 torch tensor;
        `FileNotFoundError` (pvrs's `VectorNotFoundError`) when the split lacks it."""
        import torch

        self._check(mask_strategy)
        return torch.from_numpy(self.store.load(persona_id, prompt_variant))

    def list_personas(
        self,
        variants: Sequence[str] | None = None,
        mask_strategy: object | None = None,
        warn_missing: bool = False,
        *,
        include_baseline: bool = False,
    ) -> list[str]:
        self._check(mask_strategy)
        requested = self.available_variants() if variants is None else list(variants)
        return _shared_personas(self.store, requested, warn_missing, include_baseline)

    def persona_names(
        self,
        persona_ids: Sequence[str],
        variants: Sequence[str] | None = None,
        mask_strategy: object | None = None,
    ) -> dict[str, str]:
        self._check(mask_strategy)
        requested = self.available_variants() if variants is None else list(variants)
        return self.store.persona_names(persona_ids, requested)

    def list_layers(
        self,
        variants: Sequence[str],
        persona_ids: Sequence[str] | None = None,
        mask_strategy: object | None = None,
    ) -> list[int]:
        self._check(mask_strategy)
        return self.store.list_layers(variants, persona_ids)


class TraitVectorStore(_PerStrategy[_TraitStore]):
    """`persona_vectors.artifacts.TraitVectorStore` (persona-vectors main): one
    `(num_layers, hidden_size)` mean swap delta per attribute in
    `<root>/<model_dir>/<mask_strategy>/<variant>/<attribute>.safetensors`, and a manifest
    `{num_layers, hidden_size, attributes: {attribute: contrast metadata}}`, with the
    reference's methods and torch tensors over pvrs's `pvrs.store.traits.TraitVectorStore`
    (its checks on reads, atomic writes). Default root: `$ARTIFACTS_DIR/trait_vectors`."""

    _store_class = _TraitStore

    def save(
        self,
        attribute: str,
        mean_delta: Any,
        *,
        variant: str = "templated",
        mask_strategy: object | None = None,
        **entry: object,
    ) -> Path:
        """Save the per-layer mean delta for `attribute` plus its metadata `entry`; returns
        the variant folder, as the reference does."""
        return self.store(mask_strategy).save(attribute, mean_delta, entry, variant).parent

    def load(self, attribute: str, *, variant: str = "templated", mask_strategy: object | None = None) -> Any:
        """The attribute's `(num_layers, hidden_size)` mean delta as a float32 torch tensor."""
        import torch

        return torch.from_numpy(self.store(mask_strategy).load(attribute, variant))

    def metadata(self, attribute: str, *, variant: str = "templated", mask_strategy: object | None = None) -> dict[str, Any]:
        """The attribute's contrast metadata (`value_from`, `value_to`, `auc_by_layer`, ...)."""
        return self.store(mask_strategy).metadata(attribute, variant)

    def list_attributes(self, *, variant: str = "templated", mask_strategy: object | None = None) -> list[str]:
        return self.store(mask_strategy).list_attributes(variant)

    def list_layers(
        self,
        variants: Sequence[str],
        item_ids: Sequence[str] | None = None,
        mask_strategy: object | None = None,
    ) -> list[int]:
        """Layers shared by the variants ([] when one lacks a manifest or an item)."""
        manifests = [self.store(mask_strategy).read_manifest(v) for v in variants]
        if not manifests or any(m is None or not set(item_ids or ()) <= set(m["attributes"]) for m in manifests):
            return []
        return list(range(min(m["num_layers"] for m in manifests if m is not None)))

    def available_variants(
        self, variants: Sequence[str] | None = None, mask_strategy: object | None = None
    ) -> list[str]:
        return self.store(mask_strategy).available_variants(self.variants if variants is None else variants)
