"""Where pvrs keeps things: the artifacts tree and its cache (both overridable by env var)."""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS_ENV = "ARTIFACTS_DIR"
CACHE_ENV = "PVRS_CACHE_DIR"


def artifacts_dir() -> Path:
    """`$ARTIFACTS_DIR`, else `./artifacts` (the reference tool's default)."""
    return Path(os.environ.get(ARTIFACTS_ENV) or "artifacts")


def activations_dir() -> Path:
    """Root of the activation store: `<artifacts>/activations`."""
    return artifacts_dir() / "activations"


def cache_dir() -> Path:
    """`$PVRS_CACHE_DIR`, else `$XDG_CACHE_HOME/pvrs`, else `~/.cache/pvrs`."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pvrs"
