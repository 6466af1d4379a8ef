"""The manifest of a variant folder: its JSON text (one line per persona), reading and
parsing it, and merging a save's shape and provenance into it without mixing runs."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pvrs.errors import InvalidArgumentError, ManifestError
from pvrs.jsonio import decode
from pvrs.store.layout import (
    _MUTABLE_PROVENANCE,
    DEFAULT_ENGINE,
    FORMAT,
    FORMAT_VERSION,
    LAYER_CONVENTION,
    POOLING,
    TENSOR_SUFFIX,
    VectorRecord,
    strategy_name,
)

_JSON = json.JSONEncoder(ensure_ascii=False)


def entry_of(record: VectorRecord) -> dict[str, Any]:
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


RowCache = dict[str, tuple[Any, str]]
"""Each persona's encoded manifest line, by persona id, with the entry object it encodes."""


def manifest_text(manifest: Mapping[str, Any], rows: RowCache | None = None) -> str:
    """The manifest as indented JSON with one line per persona. Each piece goes through
    json's C encoder: an `indent=` dump takes the pure-Python one, which made every save
    cost ~45 ms at 1,000 personas (a manifest is rewritten after each persona).

    `rows` reuses lines encoded by an earlier call, so a batch save encodes only its own
    personas (re-encoding 10,000 rows per batch made saves slower as the store grew). A line
    is reused only for the very same entry object: an entry that changes must be a new dict.
    `rows` is left holding this manifest's lines only."""
    dump = _JSON.encode
    fields = []
    for key, value in manifest.items():
        if key == "personas" and isinstance(value, Mapping):
            lines = _persona_lines(value, rows)
            value_text = "{\n" + ",\n".join(lines) + "\n  }" if lines else "{}"
        else:
            value_text = dump(value)
        fields.append(f"  {dump(str(key))}: {value_text}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def _persona_lines(personas: Mapping[str, Any], rows: RowCache | None) -> list[str]:
    dump = _JSON.encode
    if rows is None:
        return [f"    {dump(str(pid))}: {dump(entry)}" for pid, entry in personas.items()]
    fresh: RowCache = {}
    for pid, entry in personas.items():
        cached = rows.get(pid)
        if cached is None or cached[0] is not entry:
            cached = (entry, f"    {dump(str(pid))}: {dump(entry)}")
        fresh[pid] = cached
    rows.clear()
    rows.update(fresh)
    return [line for _, line in fresh.values()]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest_bytes(path: Path) -> bytes | None:
    """The manifest's bytes, None when the folder has neither a manifest nor tensors.

    The rules of `pvrs validate` (`rust/manifest/model.rs`): the manifest is a regular file
    (not a symlink), and a folder holding tensors without one is an error, never "empty"
    (a reader skipping it would hide vectors, a save would orphan them)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        if any(path.parent.glob(f"*{TENSOR_SUFFIX}")):
            raise ManifestError(
                f"{path.parent}: holds {TENSOR_SUFFIX} files but no {path.name}; restore the "
                "manifest (or move the tensors out) and run "
                f"`pvrs validate {path.parent}`"
            ) from None
        return None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(
            f"{path}: not a regular file (symlink, folder or device); copy the manifest in "
            f"and run `pvrs validate {path.parent}`"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from None


def parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    """The manifest, checked by the very check `pvrs validate` applies (`rust/manifest/
    model.rs`: JSON, field types and counts, persona ids, the folders it lives in), so every
    reader refuses what validate refuses and none meets a string where a count belongs."""
    from pvrs import _core

    for problem in _core.manifest_problems(raw, path):
        if problem["severity"] == "error":
            if is_trait_manifest(raw):  # persona-vectors' other store: say what reads it
                raise ManifestError(
                    f"{path}: holds persona-vectors trait vectors (its manifest keys 'attributes', not "
                    "'personas'); read them with pvrs.compat.persona_vectors.TraitVectorStore, or pass "
                    "an <attribute>.safetensors file as a vector (--vector FILE)"
                )
            raise ManifestError(
                f"{path}: {problem['message']}; run `pvrs validate {path.parent}`, then fix "
                "that field or delete the folder and extract again"
            )
    # Rust has parsed it: valid UTF-8 JSON nested at most 128 levels.
    return decode(raw, str(path), ManifestError)


def is_trait_manifest(raw: bytes) -> bool:
    """Whether `raw` is the manifest of persona-vectors' trait vector store (`trait_vectors/`,
    one mean swap delta per attribute), keyed `attributes` instead of `personas`."""
    try:
        doc = decode(raw, "manifest", ManifestError)
    except ManifestError:  # not JSON (nested 100,000 deep, say): not a trait store's either
        return False
    return isinstance(doc, dict) and "personas" not in doc and isinstance(doc.get("attributes"), dict)


def provenance_header(
    model_name: str,
    mask_strategy: str,
    variant: str,
    provenance: Mapping[str, Any] | None,
    folder: Path,
) -> dict[str, Any]:
    """Every provenance key of a save into `folder` (`mask_strategy`/`variant`), defaults
    filled in; a `provenance` that names another strategy or variant than the folder's is
    refused."""
    from pvrs._core import __version__

    merged: dict[str, Any] = {
        "model": model_name,
        "revision": None,
        "dtype": None,
        "mask_strategy": mask_strategy,
        "variant": variant,
        "layer_convention": LAYER_CONVENTION,
        "pooling": POOLING,
        "chat_template_sha256": None,
        "pvrs_version": __version__,
        "engine": None,
        "engine_version": None,
    }
    for key, value in (provenance or {}).items():
        merged[key] = strategy_name(value) if key == "mask_strategy" else value
    for key in ("mask_strategy", "variant"):
        if merged[key] != (mask_strategy if key == "mask_strategy" else variant):
            raise InvalidArgumentError(
                f"provenance {key}={merged[key]!r} disagrees with the folder it is saved in "
                f"({folder})"
            )
    return merged


def merge_header(
    manifest: dict[str, Any],
    path: Path,
    shape: tuple[int, int],
    provenance: dict[str, Any],
) -> None:
    """Check `shape`/`provenance` against an existing manifest and fill what it lacks."""
    written = "format" in manifest
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
        if key == "engine" and existing is None and written:
            existing = DEFAULT_ENGINE
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
