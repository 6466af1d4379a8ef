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

Reading and aggregating go through the Rust core (memory-mapped, GIL released)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.errors import (
    ArtifactError,
    InvalidArgumentError,
    ManifestError,
    NonFiniteError,
    PersonaIdError,
    PvrsError,
)
from pvrs.models import model_dir_name
from pvrs.paths import activations_dir

MANIFEST_FILENAME = "manifest.json"
LOCK_FILENAME = ".manifest.lock"
TENSOR_KEY = "activations"
TENSOR_SUFFIX = ".safetensors"
SAMPLES_DIRNAME = "samples"
BASELINE_PERSONA_ID = "baseline_assistant"
SUPPORTED_VARIANTS: tuple[str, ...] = ("templated", "biography")
DEFAULT_MASK_STRATEGY = "answer_mean"

FORMAT = "pvrs.persona_vectors"
FORMAT_VERSION = 1
# Row i is the output of decoder block i; no embedding row (DESIGN.md "Layer convention").
LAYER_CONVENTION = "decoder_block_outputs"
# Per sample the mean over its selected tokens, per persona the mean of those sample means.
POOLING = "mean_of_sample_means"
PROVENANCE_KEYS: tuple[str, ...] = (
    "model",
    "revision",
    "dtype",
    "mask_strategy",
    "variant",
    "layer_convention",
    "pooling",
    "chat_template_sha256",
    "pvrs_version",
)
# Provenance that may legitimately change between runs adding to the same folder.
_MUTABLE_PROVENANCE = frozenset({"pvrs_version"})
MAX_PERSONA_ID_BYTES = 200
LOCK_TIMEOUT_S = 600.0


class VectorNotFoundError(ArtifactError, FileNotFoundError):
    """No vector is saved for the requested persona/variant (a `FileNotFoundError`, as in 0.6.x)."""


def validate_persona_id(persona_id: object) -> str:
    """Return `persona_id` if it is a safe file name, else raise `PersonaIdError`.

    Safe: a non-empty string, no path separators, no `..`, no control characters,
    at most 200 bytes of UTF-8. `rust/manifest.rs` applies the same rules."""
    if not isinstance(persona_id, str):
        raise PersonaIdError(
            f"persona id {persona_id!r} must be a string, not {type(persona_id).__name__}"
        )
    if not persona_id:
        raise PersonaIdError("persona id is empty; give every persona a non-empty id")
    problem = None
    if "/" in persona_id or "\\" in persona_id:
        problem = "contains a path separator"
    elif ".." in persona_id:
        problem = "contains '..'"
    elif any(unicodedata.category(ch) == "Cc" for ch in persona_id):
        problem = "contains a control character"
    else:
        try:
            size = len(persona_id.encode("utf-8"))
        except UnicodeEncodeError:
            problem = "is not valid UTF-8 (lone surrogate)"
        else:
            if size > MAX_PERSONA_ID_BYTES:
                problem = f"is {size} bytes long (at most {MAX_PERSONA_ID_BYTES} in UTF-8)"
    if problem:
        raise PersonaIdError(
            f"persona id {persona_id!r} {problem}; persona ids are file names: "
            "use letters, digits, '_', '-' or '.'"
        )
    return persona_id


def _strategy_name(mask_strategy: object | None) -> str:
    """Folder name of a mask strategy (accepts `MaskStrategy` members and plain strings)."""
    if mask_strategy is None:
        return DEFAULT_MASK_STRATEGY
    return str(getattr(mask_strategy, "value", mask_strategy))


def _as_float32(activations: Any, what: str, ndim: int) -> np.ndarray:
    """Numpy or torch input -> C-contiguous float32 numpy, checked for shape and finiteness."""
    if type(activations).__module__.startswith("torch"):
        import torch

        activations = activations.detach().to("cpu", torch.float32).numpy()
    try:
        array = np.ascontiguousarray(np.asarray(activations, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{what}: activations are not numeric ({exc})") from None
    if array.ndim != ndim or 0 in array.shape:
        expected = (
            "(num_layers, hidden_size)" if ndim == 2 else "(n_samples, num_layers, hidden_size)"
        )
        raise InvalidArgumentError(
            f"{what}: activations must have shape {expected}, got {tuple(array.shape)}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        layers = sorted({int(i) for i in np.argwhere(~finite)[:, -2]})
        raise NonFiniteError(
            f"{what}: {bad} NaN/Inf value(s) at layer(s) {layers[:10]}; nothing was saved. "
            "Check the model dtype (float16 overflows; try --dtype bfloat16 or float32)"
        )
    return array


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_JSON = json.JSONEncoder(ensure_ascii=False)


def _entry_of(record: VectorRecord) -> dict[str, Any]:
    """A persona's manifest entry, its tensor's sha256 still to be filled in."""
    entry: dict[str, Any] = {
        "name": str(record.name),
        "sample_ids": [str(s) for s in record.sample_ids],
        "n_samples": len(record.sample_ids),
        "n_tokens": None if record.n_tokens is None else int(record.n_tokens),
        "created_at": _now(),
        "sha256": None,
    }
    if record.samples_sha256 is not None:
        entry["samples_sha256"] = record.samples_sha256
    return entry


def _folder_name(name: str, what: str) -> str:
    """`name` if it can be one folder inside the store (no separators, no `..`, no leading
    dot, which packaging skips as hidden)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise InvalidArgumentError(
            f"{what} {name!r} cannot name a folder in the store; use letters, digits, '_' or '-'"
        )
    return name


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """The manifest as indented JSON with one line per persona. Each piece goes through
    json's C encoder: an `indent=` dump takes the pure-Python one, which made every save
    cost ~45 ms at 1,000 personas (a manifest is rewritten after each persona)."""
    dump = _JSON.encode
    fields = []
    for key, value in manifest.items():
        if key == "personas" and isinstance(value, Mapping) and value:
            rows = ",\n".join(f"    {dump(str(pid))}: {dump(entry)}" for pid, entry in value.items())
            value_text = "{\n" + rows + "\n  }"
        else:
            value_text = dump(value)
        fields.append(f"  {dump(str(key))}: {value_text}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix:
    a temporary file in the same folder (`.<name>.<random>.tmp`), fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _safetensors_bytes(array: np.ndarray, metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    return save({TENSOR_KEY: array}, metadata=metadata)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class VectorRecord:
    """One persona's vector for `PersonaVectorStore.save_many`."""

    persona_id: str
    activations: Any
    name: str
    sample_ids: Sequence[str]
    n_tokens: int | None = None
    # Digest of what the vector was computed from (prompt, questions, answers): lets a
    # resumed run tell "same ids, same samples" from "same ids, edited samples".
    samples_sha256: str | None = None


class _PersonaQueries:
    """The persona-vectors 0.6.x query semantics, shared by the local store and
    `pvrs.hub.HFPersonaVectorStore` so both answer alike. A store provides `variants` and
    two lookups; everything else is defined here once."""

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


class PersonaVectorStore(_PersonaQueries):
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
        self.mask_strategy = _folder_name(_strategy_name(mask_strategy), "mask strategy")
        self.variants = tuple(variants)
        self._manifest_cache: dict[str, tuple[bytes, dict[str, Any]]] = {}

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
        return self.model_dir / self.mask_strategy / _folder_name(variant, "variant")

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

    @staticmethod
    def _read_manifest_bytes(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from None

    @staticmethod
    def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
        try:
            manifest = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(
                f"{path}: not valid JSON ({exc}); run `pvrs validate {path.parent}`"
            ) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("personas"), dict):
            raise ManifestError(
                f"{path}: the manifest has no 'personas' mapping; run `pvrs validate {path.parent}`"
            )
        return manifest

    def read_manifest(self, variant: str) -> dict[str, Any] | None:
        """The variant's manifest (None when the folder has none). Treat it as read-only:
        the parsed manifest is reused while the file's bytes are unchanged (comparing bytes,
        not timestamps, so another process's write is never missed)."""
        path = self.manifest_path(variant)
        raw = self._read_manifest_bytes(path)
        if raw is None:
            return None
        cached = self._manifest_cache.get(variant)
        if cached is not None and cached[0] == raw:
            return cached[1]
        manifest = self._parse_manifest(path, raw)
        self._manifest_cache[variant] = (raw, manifest)
        return manifest

    def _provenance(self, variant: str, provenance: Mapping[str, Any] | None) -> dict[str, Any]:
        from pvrs import __version__

        merged: dict[str, Any] = {
            "model": self.model_name,
            "revision": None,
            "dtype": None,
            "mask_strategy": self.mask_strategy,
            "variant": variant,
            "layer_convention": LAYER_CONVENTION,
            "pooling": POOLING,
            "chat_template_sha256": None,
            "pvrs_version": __version__,
        }
        for key, value in (provenance or {}).items():
            merged[key] = _strategy_name(value) if key == "mask_strategy" else value
        for key in ("mask_strategy", "variant"):
            if merged[key] != (self.mask_strategy if key == "mask_strategy" else variant):
                raise InvalidArgumentError(
                    f"provenance {key}={merged[key]!r} disagrees with the folder it is saved in "
                    f"({self.variant_dir(variant)})"
                )
        return merged

    def _merge_header(
        self,
        manifest: dict[str, Any],
        path: Path,
        shape: tuple[int, int],
        provenance: dict[str, Any],
    ) -> None:
        """Check `shape`/`provenance` against an existing manifest and fill what it lacks."""
        for key, value in zip(("num_layers", "hidden_size"), shape, strict=True):
            existing = manifest.get(key)
            if existing is not None and existing != value:
                raise ManifestError(
                    f"{path}: holds vectors with {key}={existing} but this save has {key}={value}; "
                    "save into another --output-dir root or delete that folder"
                )
            manifest[key] = value
        manifest.setdefault("format", FORMAT)
        manifest.setdefault("format_version", FORMAT_VERSION)
        for key, value in provenance.items():
            existing = manifest.get(key)
            if (
                key not in _MUTABLE_PROVENANCE
                and existing is not None
                and value is not None
                and existing != value
            ):
                raise ManifestError(
                    f"{path}: existing vectors were made with {key}={existing!r} but this save has "
                    f"{key}={value!r}; mixing them would corrupt comparisons. Save into another "
                    "--output-dir root or delete that folder"
                )
            if value is not None or key not in manifest:
                manifest[key] = value

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
        from filelock import FileLock

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
            array = _as_float32(record.activations, f"persona {pid!r} ({variant})", ndim=2)
            prepared.append((record, array))
        shapes = {array.shape for _, array in prepared}
        if len(shapes) > 1:
            raise InvalidArgumentError(
                f"save_many({variant!r}): records have different shapes {sorted(shapes)}"
            )
        shape = next(iter(shapes))
        header = self._provenance(variant, provenance)

        directory = self.variant_dir(variant)
        directory.mkdir(parents=True, exist_ok=True)
        manifest_path = directory / MANIFEST_FILENAME
        paths: list[Path] = []
        # The lock covers tensor writes too: a save that fails its manifest checks must not
        # have replaced a vector that is already recorded.
        with FileLock(str(directory / LOCK_FILENAME), timeout=LOCK_TIMEOUT_S):
            raw = self._read_manifest_bytes(manifest_path)
            manifest = (
                {"num_layers": None, "hidden_size": None, "personas": {}}
                if raw is None
                else self._parse_manifest(manifest_path, raw)
            )
            self._merge_header(manifest, manifest_path, shape, header)
            entries = {record.persona_id: _entry_of(record) for record, _ in prepared}
            # Everything that can fail on the inputs (a name JSON cannot encode, ...) fails
            # here, before any file is touched.
            try:
                manifest_text({**manifest, "personas": {**manifest["personas"], **entries}}).encode()
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
                atomic_write_bytes(manifest_path, manifest_text(manifest).encode())
            for record, array in prepared:
                data = _safetensors_bytes(array)  # one file's bytes at a time
                path = directory / f"{record.persona_id}{TENSOR_SUFFIX}"
                atomic_write_bytes(path, data)
                paths.append(path)
                entries[record.persona_id]["sha256"] = hashlib.sha256(data).hexdigest()
            manifest["personas"].update(entries)
            atomic_write_bytes(manifest_path, manifest_text(manifest).encode())
        return paths

    def save_samples(
        self, persona_id: str, variant: str, activations: Any, sample_ids: Sequence[str]
    ) -> Path:
        """Save a persona's per-sample vectors `(n_samples, num_layers, hidden_size)` in
        `<variant>/samples/<persona_id>.safetensors` (tensor "activations", sample ids in the
        safetensors metadata). Not recorded in the manifest; readers of 0.6.x ignore it."""
        array = _as_float32(activations, f"samples of persona {persona_id!r} ({variant})", ndim=3)
        sample_ids = [str(s) for s in sample_ids]
        if len(sample_ids) != array.shape[0]:
            raise InvalidArgumentError(
                f"samples of persona {persona_id!r} ({variant}): {array.shape[0]} vectors but "
                f"{len(sample_ids)} sample ids"
            )
        path = self.samples_path(persona_id, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"sample_ids": json.dumps(sample_ids, ensure_ascii=False), "format": FORMAT}
        atomic_write_bytes(path, _safetensors_bytes(array, metadata))
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
        if not isinstance(entry, dict) or not self.tensor_path(persona_id, variant).is_file():
            return False
        if sample_ids is not None and [str(s) for s in entry.get("sample_ids") or []] != [
            str(s) for s in sample_ids
        ]:
            return False
        saved_digest = entry.get("samples_sha256")
        if samples_sha256 is not None and saved_digest is not None and saved_digest != samples_sha256:
            return False
        return not with_samples or self._samples_ids(persona_id, variant) == [
            str(s) for s in entry.get("sample_ids") or []
        ]

    def _samples_ids(self, persona_id: str, variant: str) -> list[str] | None:
        """Sample ids in a per-sample file's metadata, read from its header only (None: no
        readable file)."""
        from pvrs import _core

        try:
            header = _core.read_safetensors_header(self.samples_path(persona_id, variant))
        except (PvrsError, OSError):  # missing, truncated or foreign: not as pvrs writes it
            return None
        metadata = header["metadata"]
        return _metadata_sample_ids(metadata) if isinstance(metadata, dict) else None

    def check_compatible(self, variant: str, shape: tuple[int, int], provenance: Mapping[str, Any]) -> None:
        """Raise `ManifestError` now if saving vectors of `shape` with `provenance` into
        `variant` would be refused later (other model, dtype, revision, template, shape), so
        a run stops before its first forward pass rather than at its first save."""
        manifest = self.read_manifest(variant)
        if manifest is not None and manifest.get("personas"):
            probe = {k: v for k, v in manifest.items() if k != "personas"}
            self._merge_header(probe, self.manifest_path(variant), shape, self._provenance(variant, provenance))

    def load(self, persona_id: str, variant: str) -> np.ndarray:
        """The persona's `(num_layers, hidden_size)` float32 vector."""
        self._entry(persona_id, variant)
        return self.stack([persona_id], variant)[0]

    def load_samples(self, persona_id: str, variant: str) -> tuple[np.ndarray, list[str]]:
        """Per-sample vectors `(n_samples, num_layers, hidden_size)` float32 and their ids."""
        path = self.samples_path(persona_id, variant)
        if not path.is_file():
            raise VectorNotFoundError(
                f"no per-sample vectors for persona {persona_id!r} at {path}; extract with per-sample saving on"
            )
        array, metadata = _read_tensor(path)
        sample_ids = _metadata_sample_ids(metadata)
        if sample_ids is None or len(sample_ids) != array.shape[0] or array.ndim != 3:
            raise ArtifactError(
                f"{path}: expected an (n_samples, num_layers, hidden_size) tensor with n_samples "
                "sample ids in its metadata; re-extract this persona"
            )
        return array, sample_ids

    def paths(self, persona_ids: Sequence[str], variant: str) -> list[Path]:
        """Tensor paths of recorded personas (raises `VectorNotFoundError` for unknown ids)."""
        for pid in persona_ids:
            self._entry(pid, variant)
        return [self.tensor_path(pid, variant) for pid in persona_ids]

    def stack(
        self, persona_ids: Sequence[str], variant: str, layers: Sequence[int] | None = None
    ) -> np.ndarray:
        """`(len(persona_ids), len(layers) or num_layers, hidden_size)` float32; with `layers`,
        only those layers' bytes are read."""
        manifest = self.read_manifest(variant) or {}
        layers = self._layer_indices(variant, layers)
        array = _stack_files(self.paths(persona_ids, variant), layers)
        expected = (manifest.get("num_layers"), manifest.get("hidden_size"))
        if layers is None and array.shape[1:] != expected:
            raise ManifestError(
                f"{self.manifest_path(variant)}: records shape {expected} but the tensors are "
                f"{array.shape[1:]}; run `pvrs validate {self.variant_dir(variant)}`"
            )
        return array

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
        return _mean_files(self.paths(ids, variant), self._layer_indices(variant, layers))

    # ---- queries: `_PersonaQueries` over the manifests ----------------------------------

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


def discover_activation_models(
    root_dir: str | os.PathLike[str] | None = None, mask_strategy: object = DEFAULT_MASK_STRATEGY
) -> list[str]:
    """Model ids (`__` turned back into `/`) with at least one variant manifest for
    `mask_strategy` under `root_dir` (default: the store root)."""
    root = Path(root_dir).expanduser() if root_dir is not None else activations_dir()
    strategy = _strategy_name(mask_strategy)
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
    in every variant) in the same order, and the layers they share."""

    store: PersonaVectorStore
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
            manifest = self.store.read_manifest(variant) or {}
            every_layer = chosen == tuple(range(manifest.get("num_layers") or 0))
            self._cache[variant][chosen] = self.store.stack(
                self.persona_ids, variant, None if every_layer else chosen
            )
        return self._cache[variant][chosen]

    def __len__(self) -> int:
        return len(self.persona_ids)


def load_analysis_dataset(
    store: PersonaVectorStore,
    variants: Sequence[str] | None = None,
    *,
    persona_ids: Sequence[str] | None = None,
    include_baseline: bool = False,
) -> AnalysisDataset:
    """Align the store's personas across `variants` (default: the store's available ones)."""
    chosen = tuple(store.available_variants() if variants is None else variants)
    if not chosen:
        raise ArtifactError(
            f"no persona vectors under {store.model_dir / store.mask_strategy}; run `pvrs extract` first"
        )
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
        raise ArtifactError(
            f"no persona is saved in every variant of {list(chosen)} under {store.model_dir / store.mask_strategy}"
        )
    names = store.persona_names(shared, chosen)
    return AnalysisDataset(
        store=store,
        variants=chosen,
        persona_ids=list(shared),
        names=[names.get(p, p) for p in shared],
        layers=store.list_layers(chosen),
    )


# ---- tensor reading --------------------------------------------------------------------


def _metadata_sample_ids(metadata: Mapping[str, str]) -> list[str] | None:
    """The sample ids `save_samples` writes into a file's metadata (None: absent or bad)."""
    try:
        ids = json.loads(metadata.get("sample_ids", "null"))
    except json.JSONDecodeError:
        return None
    return [str(s) for s in ids] if isinstance(ids, list) else None


def _read_tensor(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """The "activations" tensor of one float32 file (per-sample vectors) and its metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            if TENSOR_KEY not in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                raise ArtifactError(
                    f"{path}: no {TENSOR_KEY!r} tensor; run `pvrs validate {path.parent}`"
                )
            array = handle.get_tensor(TENSOR_KEY)
    except (SafetensorError, OSError, TypeError) as exc:
        raise ArtifactError(
            f"{path}: unreadable safetensors file ({exc}); run `pvrs validate {path.parent}`"
        ) from None
    return np.asarray(array, dtype=np.float32), metadata


def _stack_files(paths: Sequence[Path], layers: Sequence[int] | None) -> np.ndarray:
    """Rust: memory-mapped, parallel, GIL released; reads only the requested layers."""
    from pvrs import _core

    return _core.stack_files(
        [str(p) for p in paths], None if layers is None else [int(i) for i in layers]
    )


def _mean_files(paths: Sequence[Path], layers: Sequence[int] | None) -> np.ndarray:
    from pvrs import _core

    return _core.aggregate_files(
        [str(p) for p in paths], "mean", None if layers is None else [int(i) for i in layers]
    )
