"""Where commands read persona vectors from: `--source DIR|ORG/NAME`, one rule for every
reading command (`analyze`, `steer`, `chat`, `monitor`, `export`, `push`).

Commands that write vectors (`extract`, `import`) take `--output-dir` instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pvrs.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SOURCE_HELP = (
    "local store folder, packaged dataset folder or Hub dataset ORG/NAME "
    "(default: $ARTIFACTS_DIR/activations)"
)


def local_store_root(source: str | Path | None) -> Path | None:
    """The store root a local `--source` names: the folder itself, or `source/activations`
    when it is an artifacts folder. None keeps the default; a packaged dataset folder is refused."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.is_dir():
        raise InputError(f"--source {str(source)!r}: no such folder")
    if _is_packaged(path):
        raise InputError(
            f"--source {str(source)!r} is a packaged dataset (parquet), not a store; pass the store "
            "it was packaged from (the folder `pvrs extract` wrote)"
        )
    return path / "activations" if (path / "activations").is_dir() else path


def open_store(model: str, source: str | Path | None, mask_strategy: str) -> Any:
    """A store for `model` and `mask_strategy`: the local activation store (default
    `$ARTIFACTS_DIR/activations`, or the folder `source`, or `source/activations`), or a
    packaged Hub dataset (a Hub id `ORG/NAME`, or a local folder holding parquet files).
    Both have the same query methods (`load`, `stack`, `list_personas`, ...)."""
    from pvrs.store import PersonaVectorStore

    if source is None:
        return PersonaVectorStore(model, mask_strategy=mask_strategy)
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_packaged(path):
            return _hub_store(str(path), model, mask_strategy)
        return PersonaVectorStore(model, root_dir=local_store_root(path), mask_strategy=mask_strategy)
    if HUB_ID.match(str(source)) and not path.exists():
        return _hub_store(str(source), model, mask_strategy)
    raise InputError(
        f"--source {str(source)!r}: no such folder, and not a Hub dataset id (ORG/NAME)"
    )


def _is_packaged(path: Path) -> bool:
    """A packaged dataset folder has `<config>/<split>-*.parquet` files; a store (or an
    artifacts folder around one) has `<model>/<mask>/<variant>/manifest.json`. A README alone
    decides nothing: project folders have one too."""
    if (path / "activations").is_dir() or next(path.glob("*/*/*/manifest.json"), None):
        return False
    return next(path.glob("*/*.parquet"), None) is not None


def _hub_store(source: str, model: str, mask_strategy: str) -> Any:
    from pvrs.hub.reading import HFPersonaVectorStore

    return HFPersonaVectorStore(source, model, mask_strategy=mask_strategy)
