"""The local artifact store: one `(num_layers, hidden_size)` float32 vector per persona,
prompt variant and mask strategy, laid out as persona-vectors 0.6.x does (DESIGN.md):

    <root>/<model_dir>/<mask_strategy>/<variant>/manifest.json
    <root>/<model_dir>/<mask_strategy>/<variant>/<persona_id>.safetensors   # tensor "activations"
    <root>/<model_dir>/<mask_strategy>/<variant>/samples/<persona_id>.safetensors  # optional (n, L, H)

Writes are crash- and concurrency-safe: every file is written to a temporary name, fsynced
and renamed into place, and the manifest is read-modified-written under a file lock, so an
interrupted run never leaves a half-written tensor or a manifest pointing at one, and two
processes saving different personas into one tree lose nothing. `save_many` writes the
manifest once per batch, so saving 1,000 personas is not quadratic.

Reading and aggregating go through the Rust core (parallel reads, GIL released)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.engines.models import model_dir_name
from pvrs.errors import ArtifactError, InvalidArgumentError, PvrsError
from pvrs.paths import activations_dir
from pvrs.store.dataset import discover_activation_models
from pvrs.store.files import (
    as_float32,
    atomic_write_bytes,
    escapes,
    link_problem,
    mean_files,
    metadata_sample_ids,
    read_tensor,
    safetensors_bytes,
    stack_files,
    tensor_problem,
)
from pvrs.store.layout import (
    DEFAULT_MASK_STRATEGY,
    FORMAT,
    LOCK_FILENAME,
    LOCK_TIMEOUT_S,
    MANIFEST_FILENAME,
    SAMPLES_DIRNAME,
    SUPPORTED_VARIANTS,
    TENSOR_SUFFIX,
    VectorNotFoundError,
    VectorRecord,
    folder_name,
    strategy_name,
    validate_persona_id,
)
from pvrs.store.manifest import (
    RowCache,
    entry_of,
    manifest_text,
    merge_header,
    parse_manifest,
    provenance_header,
    read_manifest_bytes,
)
from pvrs.store.queries import PersonaQueries


class PersonaVectorStore(PersonaQueries):
    """Local persona-vector artifacts of one model and mask strategy.

    `root_dir` defaults to `$ARTIFACTS_DIR/activations`, else `artifacts/activations`.
    Reading follows persona-vectors 0.6.x: `list_personas` returns the personas present in
    every requested variant, and hides `baseline_assistant` unless `include_baseline=True`."""

    def __init__(
        self,
        model_name: str,
        root_dir: str | os.PathLike[str] | None = None,
        mask_strategy: object = DEFAULT_MASK_STRATEGY,
        variants: Sequence[str] = SUPPORTED_VARIANTS,
    ) -> None:
        self.model_name = model_name
        self.root_dir = Path(root_dir).expanduser() if root_dir is not None else activations_dir()
        self.mask_strategy = folder_name(strategy_name(mask_strategy), "mask strategy")
        self.variants = tuple(variants)
        # Per variant: the manifest's bytes, their parse, and its encoded persona lines.
        self._manifest_cache: dict[str, tuple[bytes, dict[str, Any], RowCache]] = {}

    def __repr__(self) -> str:
        return (
            f"PersonaVectorStore(model_name={self.model_name!r}, root_dir={str(self.root_dir)!r}, "
            f"mask_strategy={self.mask_strategy!r}, variants={self.variants!r})"
        )

    # ---- paths -------------------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        return self.root_dir / model_dir_name(self.model_name)

    def location(self, variant: str) -> str:
        return str(self.variant_dir(variant))

    def variant_dir(self, variant: str) -> Path:
        return self.model_dir / self.mask_strategy / folder_name(variant, "variant")

    def _checked_dir(self, variant: str) -> Path:
        """`variant_dir`, refused when a symlink leads it out of the store (`pvrs validate`
        refuses that too, so no reader or save goes there)."""
        directory = self.variant_dir(variant)
        outside = escapes(directory, self.root_dir)
        if outside is not None:
            raise ArtifactError(
                f"{directory}: a symlink leads this folder out of the store (to {outside}); "
                f"copy the data in instead (see `pvrs validate {self.root_dir}`)"
            )
        return directory

    def manifest_path(self, variant: str) -> Path:
        return self.variant_dir(variant) / MANIFEST_FILENAME

    def tensor_path(self, persona_id: str, variant: str) -> Path:
        return self.variant_dir(variant) / f"{validate_persona_id(persona_id)}{TENSOR_SUFFIX}"

    def samples_path(self, persona_id: str, variant: str) -> Path:
        return (
            self.variant_dir(variant)
            / SAMPLES_DIRNAME
            / f"{validate_persona_id(persona_id)}{TENSOR_SUFFIX}"
        )

    # ---- manifest ----------------------------------------------------------------------

    def read_manifest(self, variant: str) -> dict[str, Any] | None:
        """The variant's manifest (None when the folder has none). Treat it as read-only:
        the parsed manifest is reused while the file's bytes are unchanged (comparing bytes,
        not timestamps, so another process's write is never missed)."""
        path = self._checked_dir(variant) / MANIFEST_FILENAME
        raw = read_manifest_bytes(path)
        if raw is None:
            return None
        cached = self._manifest_cache.get(variant)
        if cached is not None and cached[0] == raw:
            return cached[1]
        manifest = parse_manifest(path, raw)
        self._manifest_cache[variant] = (raw, manifest, {})
        return manifest

    def _provenance(self, variant: str, provenance: Mapping[str, Any] | None) -> dict[str, Any]:
        return provenance_header(
            self.model_name, self.mask_strategy, variant, provenance, self.variant_dir(variant)
        )

    # ---- writing -----------------------------------------------------------------------

    def save(
        self,
        persona_id: str,
        variant: str,
        activations: Any,
        *,
        name: str,
        sample_ids: Sequence[str],
        n_tokens: int | None = None,
        provenance: Mapping[str, Any] | None = None,
        samples_sha256: str | None = None,
    ) -> Path:
        """Save one persona's `(num_layers, hidden_size)` vector (numpy or torch; stored as
        float32) and record it in the manifest. Returns the tensor's path."""
        record = VectorRecord(persona_id, activations, name, sample_ids, n_tokens, samples_sha256)
        return self.save_many(variant, [record], provenance=provenance)[0]

    def save_many(
        self,
        variant: str,
        records: Iterable[VectorRecord],
        *,
        provenance: Mapping[str, Any] | None = None,
    ) -> list[Path]:
        """Save many personas of one variant with a single manifest update.

        Every record is checked (id, shape, finiteness) before anything is written, so a bad
        record leaves the tree untouched."""
        records = list(records)
        if not records:
            return []
        prepared: list[tuple[VectorRecord, np.ndarray]] = []
        seen: set[str] = set()
        for record in records:
            pid = validate_persona_id(record.persona_id)
            if pid in seen:
                raise InvalidArgumentError(
                    f"persona id {pid!r} appears twice in one save_many batch"
                )
            seen.add(pid)
            array = as_float32(record.activations, f"persona {pid!r} ({variant})", ndim=2)
            prepared.append((record, array))
        shapes = {array.shape for _, array in prepared}
        if len(shapes) > 1:
            raise InvalidArgumentError(
                f"save_many({variant!r}): records have different shapes {sorted(shapes)}"
            )
        shape = next(iter(shapes))
        header = self._provenance(variant, provenance)

        directory = self._checked_dir(variant)
        directory.mkdir(parents=True, exist_ok=True)
        manifest_path = directory / MANIFEST_FILENAME
        paths: list[Path] = []
        # The lock covers tensor writes too: a save that fails its manifest checks must not
        # have replaced a vector that is already recorded.
        with _write_lock(directory):
            manifest, rows = self._manifest_to_edit(variant, manifest_path)
            merge_header(manifest, manifest_path, shape, header)
            entries = {record.persona_id: entry_of(record) for record, _ in prepared}
            # Everything that can fail on the inputs (a name JSON cannot encode, ...) fails
            # here, before any file is touched.
            try:
                manifest_text(
                    {**manifest, "personas": {**manifest["personas"], **entries}}, rows
                ).encode()
            except UnicodeEncodeError as exc:
                raise InvalidArgumentError(
                    f"save_many({variant!r}): a persona name or sample id is not valid text "
                    f"({exc.reason}: {exc.object[exc.start : exc.end]!r}); clean the input"
                ) from None
            # Entries about to be replaced leave the manifest first: a crash or error while
            # their tensors are rewritten then leaves unrecorded files (resume recomputes
            # them), never an entry that describes another vector than the file holds.
            replaced = [pid for pid in entries if pid in manifest["personas"]]
            if replaced:
                for pid in replaced:
                    del manifest["personas"][pid]
                atomic_write_bytes(manifest_path, manifest_text(manifest, rows).encode())
            for record, array in prepared:
                data = safetensors_bytes(array)  # one file's bytes at a time
                path = directory / f"{record.persona_id}{TENSOR_SUFFIX}"
                atomic_write_bytes(path, data)
                paths.append(path)
                # A new dict, not an edit: `rows` holds this entry's line without the sha256.
                entry = entries[record.persona_id]
                entries[record.persona_id] = {**entry, "sha256": hashlib.sha256(data).hexdigest()}
            manifest["personas"].update(entries)
            raw = manifest_text(manifest, rows).encode()
            atomic_write_bytes(manifest_path, raw)
            self._manifest_cache[variant] = (raw, manifest, rows)
        return paths

    def _manifest_to_edit(self, variant: str, path: Path) -> tuple[dict[str, Any], RowCache]:
        """The manifest on disk (empty when there is none) as a copy to edit, and its
        encoded lines. The cached parse is reused only when the file's bytes are the cached
        ones (another process may have written it); copied so that a manifest a caller got
        from `read_manifest` never changes under it."""
        raw = read_manifest_bytes(path)
        if raw is None:
            return {"num_layers": None, "hidden_size": None, "personas": {}}, {}
        cached = self._manifest_cache.get(variant)
        if cached is None or cached[0] != raw:
            cached = (raw, parse_manifest(path, raw), {})
            self._manifest_cache[variant] = cached
        _, manifest, rows = cached
        return {**manifest, "personas": dict(manifest["personas"])}, rows

    def save_samples(
        self, persona_id: str, variant: str, activations: Any, sample_ids: Sequence[str]
    ) -> Path:
        """Save a persona's per-sample vectors `(n_samples, num_layers, hidden_size)` in
        `<variant>/samples/<persona_id>.safetensors` (tensor "activations", sample ids in the
        safetensors metadata). Not recorded in the manifest; readers of 0.6.x ignore it."""
        array = as_float32(activations, f"samples of persona {persona_id!r} ({variant})", ndim=3)
        sample_ids = [str(s) for s in sample_ids]
        if len(sample_ids) != array.shape[0]:
            raise InvalidArgumentError(
                f"samples of persona {persona_id!r} ({variant}): {array.shape[0]} vectors but "
                f"{len(sample_ids)} sample ids"
            )
        path = self.samples_path(persona_id, variant)
        directory = self._checked_dir(variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"sample_ids": json.dumps(sample_ids, ensure_ascii=False), "format": FORMAT}
        data = safetensors_bytes(array, metadata)
        with _write_lock(directory):
            atomic_write_bytes(path, data)
        return path

    def drop_samples(self, persona_id: str, variant: str) -> None:
        """Remove the persona's per-sample vectors, if any: called when its vector is
        recomputed without them, so no file describes an older vector."""
        self.samples_path(persona_id, variant).unlink(missing_ok=True)

    # ---- reading -----------------------------------------------------------------------

    def _entry(self, persona_id: str, variant: str) -> dict[str, Any]:
        manifest = self.read_manifest(variant)
        entry = None if manifest is None else manifest["personas"].get(persona_id)
        if not isinstance(entry, dict):
            where = f"{self.model_name!r} / {self.mask_strategy!r} / {variant!r}"
            if manifest is None:
                hint = f"no manifest at {self.manifest_path(variant)}; run `pvrs extract` first"
            else:
                known = sorted(manifest["personas"])
                hint = f"known personas: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}"
            raise VectorNotFoundError(f"no vector for persona {persona_id!r} in {where} ({hint})")
        return entry

    def has(
        self,
        persona_id: str,
        variant: str,
        sample_ids: Sequence[str] | None = None,
        *,
        samples_sha256: str | None = None,
        with_samples: bool = False,
    ) -> bool:
        """True when the persona's vector is saved (manifest entry and tensor file) and, if
        given, was computed from exactly those `sample_ids` and samples (`samples_sha256`;
        entries saved without a digest match any), with its per-sample vectors saved too
        when `with_samples`. Resume uses it to skip what is done."""
        manifest = self.read_manifest(variant)
        entry = None if manifest is None else manifest["personas"].get(persona_id)
        if not isinstance(entry, dict):
            return False
        if sample_ids is not None and [str(s) for s in entry.get("sample_ids") or []] != [
            str(s) for s in sample_ids
        ]:
            return False
        saved_digest = entry.get("samples_sha256")
        if samples_sha256 is not None and saved_digest is not None and saved_digest != samples_sha256:
            return False
        if with_samples and self._samples_ids(persona_id, variant) != [
            str(s) for s in entry.get("sample_ids") or []
        ]:
            return False
        return self.tensor_problem(persona_id, variant) is None

    def tensor_problem(self, persona_id: str, variant: str, *, deep: bool = True) -> str | None:
        """Why the recorded persona's tensor file cannot be used (None: it can, or the persona
        is not recorded): resume recomputes such a persona instead of skipping it. `deep`
        adds the manifest's sha256 and a NaN/Inf scan (cheap: see `files.tensor_problem`)."""
        manifest = self.read_manifest(variant)
        entry = None if manifest is None else manifest["personas"].get(persona_id)
        if manifest is None or entry is None:
            return None
        shape = (manifest["num_layers"], manifest["hidden_size"])
        path = self.tensor_path(persona_id, variant)
        return tensor_problem(path, self.root_dir, shape, deep=deep, sha256=entry.get("sha256"))

    def _samples_ids(self, persona_id: str, variant: str) -> list[str] | None:
        """Sample ids in a per-sample file's metadata, read from its header only (None: no
        readable file)."""
        from pvrs import _core

        try:
            header = _core.read_safetensors_header(self.samples_path(persona_id, variant))
        except (PvrsError, OSError):  # missing, truncated or foreign: not as pvrs writes it
            return None
        metadata = header["metadata"]
        return metadata_sample_ids(metadata) if isinstance(metadata, dict) else None

    def check_compatible(self, variant: str, shape: tuple[int, int], provenance: Mapping[str, Any]) -> None:
        """Raise `ManifestError` now if saving vectors of `shape` with `provenance` into
        `variant` would be refused later (other model, dtype, revision, template, shape), so
        a run stops before its first forward pass rather than at its first save."""
        manifest = self.read_manifest(variant)
        if manifest is not None and manifest.get("personas"):
            probe = {k: v for k, v in manifest.items() if k != "personas"}
            merge_header(probe, self.manifest_path(variant), shape, self._provenance(variant, provenance))

    def load(self, persona_id: str, variant: str) -> np.ndarray:
        """The persona's `(num_layers, hidden_size)` float32 vector."""
        self._entry(persona_id, variant)
        return self.stack([persona_id], variant)[0]

    def load_samples(self, persona_id: str, variant: str) -> tuple[np.ndarray, list[str]]:
        """Per-sample vectors `(n_samples, num_layers, hidden_size)` float32 and their ids."""
        path = self.samples_path(persona_id, variant)
        if path.is_symlink():
            raise ArtifactError(f"{path}: {link_problem(path, self.root_dir)}")
        if not path.is_file():
            raise VectorNotFoundError(
                f"no per-sample vectors for persona {persona_id!r} at {path}; extract with per-sample saving on"
            )
        array, metadata = read_tensor(path)
        sample_ids = metadata_sample_ids(metadata)
        if sample_ids is None or len(sample_ids) != array.shape[0] or array.ndim != 3:
            raise ArtifactError(
                f"{path}: expected an (n_samples, num_layers, hidden_size) tensor with n_samples "
                "sample ids in its metadata; re-extract this persona"
            )
        return array, sample_ids

    def paths(self, persona_ids: Sequence[str], variant: str) -> list[Path]:
        """Tensor paths of recorded personas, each checked as `pvrs validate` checks it (raises
        `VectorNotFoundError` for unknown ids, `ArtifactError` for a file no reader may use)."""
        for pid in persona_ids:
            self._entry(pid, variant)
            problem = self.tensor_problem(pid, variant, deep=False)
            if problem is not None:
                raise ArtifactError(
                    f"{self.tensor_path(pid, variant)}: {problem}; run "
                    f"`pvrs validate {self.variant_dir(variant)}`, then re-extract persona {pid!r}"
                )
        return [self.tensor_path(pid, variant) for pid in persona_ids]

    def stack(
        self, persona_ids: Sequence[str], variant: str, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """`(len(persona_ids), len(layers) or num_layers, hidden_size)` float32; with `layers`,
        only those layers' bytes are read."""
        layers = self._layer_indices(variant, layers)
        return stack_files(self.paths(persona_ids, variant), layers)

    def mean(
        self,
        variant: str,
        persona_ids: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Mean vector over personas (default: every persona of the variant except the
        baseline), accumulated in float64, streamed file by file."""
        ids = self.list_personas([variant]) if persona_ids is None else list(persona_ids)
        if not ids:
            raise InvalidArgumentError(f"no personas to average in {self.variant_dir(variant)}")
        return mean_files(self.paths(ids, variant), self._layer_indices(variant, layers))

    # ---- queries: `PersonaQueries` over the manifests ----------------------------------

    def _persona_table(self, variant: str) -> dict[str, str] | None:
        manifest = self.read_manifest(variant)
        if manifest is None:
            return None
        table = {}
        for pid, entry in manifest["personas"].items():
            name = entry.get("name") if isinstance(entry, dict) else None
            table[pid] = name if isinstance(name, str) else ""
        return table

    def _num_layers(self, variant: str) -> int | None:
        manifest = self.read_manifest(variant)
        count = None if manifest is None else manifest.get("num_layers")
        return count if isinstance(count, int) and count >= 0 else None

    @staticmethod
    def discover_activation_models(
        root_dir: str | os.PathLike[str] | None = None,
        mask_strategy: object = DEFAULT_MASK_STRATEGY,
    ) -> list[str]:
        """See the module-level `discover_activation_models`."""
        return discover_activation_models(root_dir, mask_strategy)


ActivationStore = PersonaVectorStore


@contextlib.contextmanager
def _write_lock(directory: Path) -> Iterator[None]:
    """The variant folder's store lock, which every write into the folder and its samples
    folder holds: temp files found once it is taken are a killed run's, never a live
    writer's, so they are removed here (the next save after a kill cleans up)."""
    from filelock import FileLock

    with FileLock(str(directory / LOCK_FILENAME), timeout=LOCK_TIMEOUT_S):
        for stale in _temp_files(directory) + _temp_files(directory / SAMPLES_DIRNAME):
            stale.unlink(missing_ok=True)
        yield


def _temp_files(directory: Path) -> list[Path]:
    """Temp files of tensor and manifest writes in `directory` (none when it is missing).
    Names are matched only when hidden: a `glob` matched every persona's file in Python,
    per batch saved."""
    patterns = (f".*{TENSOR_SUFFIX}.*.tmp", f".{MANIFEST_FILENAME}.*.tmp")
    if not directory.is_dir():
        return []
    with os.scandir(directory) as items:
        return [
            Path(item.path)
            for item in items
            if item.name.startswith(".")
            and any(fnmatchcase(item.name, pattern) for pattern in patterns)
        ]
