"""The manifest of a variant folder: its JSON text (one line per persona), reading and
parsing it, and merging a save's shape and provenance into it without mixing runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pvrs.errors import InvalidArgumentError, ManifestError
from pvrs.store.layout import (
    _MUTABLE_PROVENANCE,
    FORMAT,
    FORMAT_VERSION,
    LAYER_CONVENTION,
    POOLING,
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



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest_bytes(path: Path) -> bytes | None:
    """The manifest's bytes, None when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from None


def parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
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
    from pvrs import __version__

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
