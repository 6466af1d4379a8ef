"""Finding the models a store holds, and aligning its personas across variants for analysis."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pvrs.errors import ArtifactError, InvalidArgumentError
from pvrs.paths import activations_dir
from pvrs.store.layout import (
    DEFAULT_MASK_STRATEGY,
    MANIFEST_FILENAME,
    VectorNotFoundError,
    strategy_name,
)
from pvrs.store.queries import PersonaQueries


def discover_activation_models(
    root_dir: str | os.PathLike[str] | None = None, mask_strategy: object = DEFAULT_MASK_STRATEGY
) -> list[str]:
    """Model ids (`__` turned back into `/`) with at least one variant manifest for
    `mask_strategy` under `root_dir` (default: the store root)."""
    root = Path(root_dir).expanduser() if root_dir is not None else activations_dir()
    strategy = strategy_name(mask_strategy)
    models: list[str] = []
    with contextlib.suppress(OSError):
        for model_root in sorted(p for p in root.iterdir() if p.is_dir()):
            strategy_root = model_root / strategy
            with contextlib.suppress(OSError):
                if strategy_root.is_dir() and any(
                    (v / MANIFEST_FILENAME).is_file() for v in strategy_root.iterdir() if v.is_dir()
                ):
                    models.append(model_root.name.replace("__", "/"))
    return models


# ---- analysis --------------------------------------------------------------------------


@dataclass
class AnalysisDataset:
    """Persona vectors of several variants, aligned for analysis: the same personas (present
    in every variant) in the same order, and the layers they share. `store` is any store
    with the shared queries: the local one or `pvrs.hub.HFPersonaVectorStore`."""

    store: PersonaQueries
    variants: tuple[str, ...]
    persona_ids: list[str]
    names: list[str]
    layers: list[int]
    _cache: dict[str, dict[tuple[int, ...], np.ndarray]] = field(default_factory=dict, repr=False)

    def samples(self, variant: str, layers: Sequence[int] | None = None) -> np.ndarray:
        """`(P, L, H)` float32: one row per persona (in `persona_ids` order) for `variant`,
        restricted to `layers` (default: the shared layers). Read once, then cached."""
        if variant not in self.variants:
            raise InvalidArgumentError(
                f"variant {variant!r} is not in this dataset (have {list(self.variants)})"
            )
        chosen = tuple(int(i) for i in (self.layers if layers is None else layers))
        if chosen not in self._cache.setdefault(variant, {}):
            every_layer = chosen == tuple(range(self.store.num_layers(variant) or 0))
            self._cache[variant][chosen] = self.store.stack(
                self.persona_ids, variant, None if every_layer else chosen
            )
        return self._cache[variant][chosen]

    def __len__(self) -> int:
        return len(self.persona_ids)


def load_analysis_dataset(
    store: PersonaQueries,
    variants: Sequence[str] | None = None,
    *,
    persona_ids: Sequence[str] | None = None,
    include_baseline: bool = False,
) -> AnalysisDataset:
    """Align the store's personas across `variants` (default: the store's available ones)."""
    chosen = tuple(store.available_variants() if variants is None else variants)
    if not chosen:
        where = ", ".join(store.location(v) for v in store.variants)
        raise ArtifactError(f"no persona vectors in {where}; run `pvrs extract` first")
    shared = store.list_personas(chosen, include_baseline=include_baseline)
    if persona_ids is not None:
        available = set(store.list_personas(chosen, include_baseline=True))
        missing = [p for p in persona_ids if p not in available]
        if missing:
            raise VectorNotFoundError(
                f"personas {missing[:8]} are not saved in every variant of {list(chosen)}"
            )
        shared = list(persona_ids)
    if not shared:
        where = ", ".join(store.location(v) for v in chosen)
        raise ArtifactError(f"no persona is saved in every variant of {list(chosen)} ({where})")
    names = store.persona_names(shared, chosen)
    return AnalysisDataset(
        store=store,
        variants=chosen,
        persona_ids=list(shared),
        names=[names.get(p, p) for p in shared],
        layers=store.list_layers(chosen),
    )


# ---- tensor reading --------------------------------------------------------------------
