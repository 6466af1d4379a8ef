"""`HFPersonaVectorStore`: persona vectors read back from a packaged dataset folder or a Hub
repo, with the local store's query methods, reading only the row groups it needs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from pvrs.engines.models import model_dir_name
from pvrs.errors import PackagingError, PersonaIdError
from pvrs.hub.packaging import (
    INDEX_COLUMNS,
)
from pvrs.hub.source import DatasetSource, SplitIndex, vector_values
from pvrs.store import (
    DEFAULT_MASK_STRATEGY,
    SUPPORTED_VARIANTS,
    VectorNotFoundError,
)
from pvrs.store.layout import strategy_name, validate_persona_id
from pvrs.store.queries import PersonaQueries


class HFPersonaVectorStore(PersonaQueries):
    """Read-only persona vectors of one model and mask strategy from a packaged dataset: a
    local folder (as written by `package` / `pvrs push --dry-run`) or a Hub dataset repo.

    Same query methods and semantics as `pvrs.store.PersonaVectorStore`. Only the needed
    files are downloaded (the card, then the split's parquet files on first use), only the
    index columns are read to list personas, and `load` decodes one row group's `vector`
    column (cached until `release_cache()`)."""

    def __init__(
        self,
        repo_id_or_local_dir: str | os.PathLike[str],
        model_name: str,
        mask_strategy: object = DEFAULT_MASK_STRATEGY,
        variants: Sequence[str] = SUPPORTED_VARIANTS,
        *,
        revision: str | None = None,
        token: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.mask_strategy = strategy_name(mask_strategy)
        self.variants = tuple(variants)
        self.config_name = f"{model_dir_name(model_name)}__{self.mask_strategy}"
        self._source = DatasetSource.open(repo_id_or_local_dir, revision=revision, token=token)
        self._indexes: dict[str, SplitIndex] = {}
        self._row_groups: dict[tuple[str, int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"HFPersonaVectorStore({self._source.where!r}, model_name={self.model_name!r}, "
            f"mask_strategy={self.mask_strategy!r})"
        )

    def location(self, variant: str) -> str:
        return f"{self._source.where} (config {self.config_name}, split {variant})"

    def splits(self) -> list[str]:
        """Every split (prompt variant) the dataset declares for this model and mask strategy."""
        return self._source.splits(self.config_name)

    def release_cache(self) -> None:
        """Drop cached indexes and decoded row groups (downloaded files stay in the Hub cache)."""
        self._indexes.clear()
        self._row_groups.clear()
        self._source._card = None
        self._source._repo_files = None

    # ---- index ---------------------------------------------------------------------------

    def _index(self, variant: str) -> SplitIndex | None:
        if variant in self._indexes:
            return self._indexes[variant]
        relpaths = self._source.split_files(self.config_name, variant)
        if not relpaths:
            return None
        import pyarrow.parquet as pq

        files = [self._source.fetch(p) for p in relpaths]
        where: dict[str, tuple[int, int, int]] = {}
        names: dict[str, str] = {}
        samples: dict[str, list[str]] = {}
        shape = None
        for fi, path in enumerate(files):
            try:
                pf = pq.ParquetFile(path)
            except (OSError, ValueError) as exc:
                raise PackagingError(f"{path}: not a readable parquet file ({exc})") from None
            missing = {*INDEX_COLUMNS, "vector"} - set(pf.schema_arrow.names)
            if missing:
                raise PackagingError(f"{path}: missing columns {sorted(missing)}")
            shape = shape or _declared_shape(pf.schema_arrow.metadata)
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg, columns=list(INDEX_COLUMNS))
                for row, (pid, name, sids) in enumerate(
                    zip(*(table.column(c).to_pylist() for c in INDEX_COLUMNS), strict=True)
                ):
                    _check_persona_id(pid, where, path)
                    if not isinstance(name, str | None) or not (
                        sids is None or (isinstance(sids, list) and all(isinstance(s, str) for s in sids))
                    ):  # a string of sample ids would read as one id per character
                        raise PackagingError(
                            f"{path}: persona {pid!r}: name must be text and sample_ids a list of "
                            "texts; re-package the dataset"
                        )
                    where[pid] = (fi, rg, row)
                    names[pid] = name or ""
                    samples[pid] = list(sids or [])
        index = SplitIndex(files, where, names, samples, shape)
        self._indexes[variant] = index
        return index

    def _require(self, persona_id: str, variant: str) -> tuple[SplitIndex, tuple[int, int, int]]:
        index = self._index(variant)
        if index is None or persona_id not in index.where:
            where = f"{self.config_name!r} split {variant!r}"
            if index is None:
                splits = self._source.splits(self.config_name)
                have = ", ".join(self.available_variants(splits)) or "none"
                hint = f"no such split; available: {have}"
            else:
                known = sorted(index.where)
                hint = f"known personas: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}"
            raise VectorNotFoundError(f"no vector for persona {persona_id!r} in {where} ({hint})")
        return index, index.where[persona_id]

    # ---- vectors -------------------------------------------------------------------------

    def _row_group(self, variant: str, index: SplitIndex, fi: int, rg: int) -> np.ndarray:
        key = (variant, fi, rg)
        if key not in self._row_groups:
            import pyarrow.parquet as pq

            path = index.files[fi]
            pf = pq.ParquetFile(path)
            table = pf.read_row_group(rg, columns=["vector"])
            self._row_groups.clear()  # memory bound: one decoded row group at a time
            values = vector_values(table.column("vector"), table.num_rows, str(path))
            if len(values) and index.shape is None:
                index.shape = values.shape[1:]  # type: ignore[assignment]
            if len(values) and values.shape[1:] != tuple(index.shape or ()):
                # layer choices are checked against the split's (declared) shape: all must match
                raise PackagingError(
                    f"{path}: vectors are {values.shape[1:]}, but this split's are "
                    f"{tuple(index.shape or ())}; re-package the dataset"
                )
            self._row_groups[key] = values
        return self._row_groups[key]

    def load(self, persona_id: str, variant: str) -> np.ndarray:
        """The persona's `(num_layers, hidden_size)` float32 vector."""
        index, (fi, rg, row) = self._require(persona_id, variant)
        return self._row_group(variant, index, fi, rg)[row].copy()

    def stack(
        self, persona_ids: Sequence[str], variant: str, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """`(len(persona_ids), len(layers) or num_layers, hidden_size)` float32, reading each
        needed row group once."""
        located = [self._require(pid, variant) for pid in persona_ids]
        layers = self._layer_indices(variant, layers)
        order = sorted(range(len(located)), key=lambda i: located[i][1])
        rows: list[np.ndarray | None] = [None] * len(located)
        for i in order:
            index, (fi, rg, row) = located[i]
            block = self._row_group(variant, index, fi, rg)[row]
            # A copy: a view would keep its whole decoded row group alive.
            rows[i] = block.copy() if layers is None else block[layers]
        if not rows:
            index = self._index(variant)
            shape = index.shape if index and index.shape else (0, 0)
            width = len(layers) if layers is not None else shape[0]
            return np.zeros((0, width, shape[1]), dtype=np.float32)
        return np.stack([r for r in rows if r is not None])

    # ---- queries: `PersonaQueries` (shared with the local store) over the split indexes --

    def sample_ids(self, persona_id: str, variant: str) -> list[str]:
        """The QA sample ids the persona's vector was averaged over."""
        index, _ = self._require(persona_id, variant)
        return list(index.sample_ids[persona_id])

    def has(self, persona_id: str, variant: str, sample_ids: Sequence[str] | None = None) -> bool:
        """True when the split holds the persona and, if `sample_ids` is given, its vector
        was computed from exactly those samples (as `PersonaVectorStore.has`)."""
        index = self._index(variant)
        if index is None or persona_id not in index.where:
            return False
        return sample_ids is None or index.sample_ids[persona_id] == [str(s) for s in sample_ids]

    def _persona_table(self, variant: str) -> dict[str, str] | None:
        index = self._index(variant)
        return None if index is None else index.names

    def _num_layers(self, variant: str) -> int | None:
        index = self._index(variant)
        if index is None:
            return None
        if index.shape is None:
            if not index.where:
                return None
            first = min(index.where.values())
            index.shape = self._row_group(variant, index, first[0], first[1]).shape[1:]  # type: ignore[assignment]
        return index.shape[0]  # type: ignore[index]


def _check_persona_id(pid: object, seen: dict[str, tuple[int, int, int]], path: object) -> None:
    """A dataset from others names its personas: each must be a safe file name (ids become
    file names when saved or reported) and appear once (a second row would hide the first)."""
    try:
        validate_persona_id(pid)
    except PersonaIdError as exc:
        raise PackagingError(f"{path}: {exc}; fix the dataset's persona_id column") from None
    if pid in seen:
        raise PackagingError(f"{path}: persona {pid!r} appears twice in one split; re-package the dataset")


def _declared_shape(metadata: dict[bytes, bytes] | None) -> tuple[int, int] | None:
    """The `vector` Array2D shape from `datasets`' schema metadata, when present."""
    from pvrs.jsonio import decode

    try:
        info = decode((metadata or {}).get(b"huggingface", b"{}"), "schema metadata")
        shape = info["info"]["features"]["vector"]["shape"]
        return int(shape[0]), int(shape[1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None

