"""The persona-vectors 0.6.x query semantics (which personas, names, variants and layers a
store holds), shared by the local store and the Hub store so both answer alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pvrs.errors import InvalidArgumentError
from pvrs.store.layout import BASELINE_PERSONA_ID


class PersonaQueries:
    """The persona-vectors 0.6.x query semantics, shared by the local store and
    `pvrs.hub.HFPersonaVectorStore` so both answer alike. A store provides `variants`, two
    lookups, `location` and `stack`; everything else is defined here once."""

    variants: tuple[str, ...]

    def _persona_table(self, variant: str) -> Mapping[str, str] | None:
        """Persona id -> display name ("" when it has none) of `variant`; None when the
        variant has no saved vectors."""
        raise NotImplementedError

    def _num_layers(self, variant: str) -> int | None:
        """Layer count of a present `variant`; None when unknown (then no layer is shared)."""
        raise NotImplementedError

    def location(self, variant: str) -> str:
        """Where `variant`'s vectors are, for messages."""
        raise NotImplementedError

    def stack(
        self, persona_ids: Sequence[str], variant: str, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """`(len(persona_ids), len(layers) or num_layers, hidden_size)` float32."""
        raise NotImplementedError

    def num_layers(self, variant: str) -> int | None:
        """Layer count of `variant`'s vectors; None when the variant is missing or its count
        unknown."""
        return self._num_layers(variant)

    def _layer_indices(self, variant: str, layers: Sequence[int] | None) -> list[int] | None:
        """`layers` as non-negative indices (`-1` is the last layer), each checked against
        the variant's layer count; None stays None (every layer)."""
        if layers is None:
            return None
        n = self._num_layers(variant)
        out = []
        for layer in layers:
            i = int(layer)
            if n is not None and not -n <= i < n:
                raise InvalidArgumentError(f"layer {i} is out of range: {self.location(variant)} has {n} layers")
            out.append(i + n if i < 0 and n is not None else i)
        if any(i < 0 for i in out):
            raise InvalidArgumentError(f"negative layers need a known layer count; {self.location(variant)} has none")
        return out

    def _tables(self, variants: Sequence[str]) -> list[Mapping[str, str]]:
        """Persona tables of `variants`, or [] when any of them is missing."""
        tables = [self._persona_table(v) for v in variants]
        if not tables or any(t is None for t in tables):
            return []
        return [t for t in tables if t is not None]

    def list_personas(
        self, variants: Sequence[str] | None = None, *, include_baseline: bool = False
    ) -> list[str]:
        """Sorted persona ids present in every requested variant (default: the store's)."""
        requested = self.variants if variants is None else tuple(variants)
        tables = self._tables(requested)
        if not tables:
            return []
        shared = set.intersection(*(set(t) for t in tables))
        if not include_baseline:
            shared.discard(BASELINE_PERSONA_ID)
        return sorted(shared)

    def persona_names(
        self, persona_ids: Sequence[str] | None = None, variants: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Display names (the first non-empty one across variants), in `persona_ids` order
        (default: `list_personas(variants, include_baseline=True)`); {} when a requested
        variant is missing."""
        requested = self.variants if variants is None else tuple(variants)
        tables = self._tables(requested)
        ids = (
            self.list_personas(requested, include_baseline=True)
            if persona_ids is None
            else persona_ids
        )
        names: dict[str, str] = {}
        for pid in ids:
            for table in tables:
                name = table.get(pid)
                if name:
                    names[pid] = name
                    break
        return names

    def available_variants(self, variants: Sequence[str] | None = None) -> list[str]:
        """Requested variants (default: the store's) with at least one saved persona."""
        candidates = self.variants if variants is None else tuple(variants)
        return [v for v in candidates if self.list_personas([v], include_baseline=True)]

    def list_layers(
        self, variants: Sequence[str] | None = None, persona_ids: Sequence[str] | None = None
    ) -> list[int]:
        """Layer indices shared by the requested variants ([] when a variant or persona is missing)."""
        requested = self.variants if variants is None else tuple(variants)
        tables = self._tables(requested)
        if not tables:
            return []
        if persona_ids and not set(persona_ids) <= set.intersection(*(set(t) for t in tables)):
            return []
        counts = []
        for variant in requested:
            count = self._num_layers(variant)
            if count is None:
                return []
            counts.append(count)
        return list(range(min(counts)))
