"""Packaging a store as a Hugging Face dataset folder (DESIGN.md "Hub dataset layout"): the
Rust core writes the parquet files and card (streamed, bounded memory, deterministic bytes)
while pvrs holds each variant folder's store lock, so every split is a consistent snapshot."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvrs import _core
from pvrs.engines.models import model_dir_name
from pvrs.errors import InputError, InvalidArgumentError
from pvrs.extraction.masks import parse_strategies
from pvrs.hub.cards import (
    CARD_FILENAME,
    CARD_TAG,
)
from pvrs.paths import activations_dir
from pvrs.store import (
    MANIFEST_FILENAME,
)
from pvrs.store.files import escapes
from pvrs.store.layout import LOCK_FILENAME, LOCK_TIMEOUT_S
from pvrs.store.manifest import parse_manifest, read_manifest_bytes

DEFAULT_ROW_GROUP_BYTES = 64 << 20
DEFAULT_FILE_BYTES = 500 << 20
INDEX_COLUMNS = ("persona_id", "name", "sample_ids")


@dataclass(frozen=True)
class SplitFiles:
    """One packaged split: its config, split name, files (relative paths) and sizes."""

    config: str
    split: str
    files: tuple[str, ...]
    num_rows: int
    num_layers: int
    hidden_size: int
    num_bytes: int
    written_bytes: int


@dataclass(frozen=True)
class PackageResult:
    """What `package` wrote into `out_dir`."""

    out_dir: Path
    splits: tuple[SplitFiles, ...]

    @property
    def files(self) -> list[str]:
        """Every written file, relative to `out_dir` (the card last)."""
        return [f for s in self.splits for f in s.files] + [CARD_FILENAME]

    @property
    def configs(self) -> list[str]:
        return sorted({s.config for s in self.splits})


def _is_previous_package(out: Path) -> bool:
    """A folder `package` wrote before: a pvrs card plus config folders of parquet files."""
    card = out / CARD_FILENAME
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    head = text.split("\n---\n", 1)[0] + "\n"
    if not text.startswith("---\n") or f"\n- {CARD_TAG}\n" not in head:
        return False
    for entry in out.iterdir():
        if entry == card:
            continue
        if not entry.is_dir() or any(
            not (f.is_file() and f.suffix == ".parquet") for f in entry.iterdir()
        ):
            return False
    return True


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if not out.exists() or not any(out.iterdir()):
        return
    if overwrite and _is_previous_package(out):
        shutil.rmtree(out)
        return
    hint = (
        "it is not a folder pvrs packaged, so it is left alone"
        if overwrite
        else "pass overwrite=True (CLI: it is replaced when it holds an earlier `pvrs push --dry-run`)"
    )
    raise InputError(f"output folder {out} is not empty; choose a new folder ({hint})")


def package(
    model_names: str | Sequence[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    mask_strategies: object | None = None,
    root_dir: str | os.PathLike[str] | None = None,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> PackageResult:
    """Write the Hub dataset folder for `model_names` (None: every model in the store) and
    `mask_strategies` (None: every strategy present) from the local store at `root_dir`
    (default `$ARTIFACTS_DIR/activations`).

    Row groups and files are sized by uncompressed bytes (a persona is never split); memory
    stays bounded by about one encoded row group per core (at most 4) plus one file's names
    and sample ids, however many personas there are, and the same tree always gives the
    same bytes. The GIL is released while it runs.
    `overwrite=True` replaces `out_dir` only when it holds an earlier package."""
    root = Path(root_dir).expanduser() if root_dir is not None else activations_dir()
    out = Path(out_dir).expanduser()
    _prepare_out_dir(out, overwrite)
    if isinstance(model_names, str):
        model_names = [model_names]
    model_dirs = None if model_names is None else [model_dir_name(m) for m in model_names]
    masks = (
        None if mask_strategies is None else [s.value for s in parse_strategies(mask_strategies)]  # type: ignore[arg-type]
    )
    if row_group_bytes <= 0 or file_bytes <= 0:
        raise InvalidArgumentError("row_group_bytes and file_bytes must be positive")
    created = not out.exists()
    try:
        with variant_locks(root, model_dirs, masks):
            if progress:
                reports = _package_with_progress(
                    root, out, model_dirs, masks, row_group_bytes, file_bytes
                )
            else:
                reports = _core.package_store(
                    root, out, model_dirs, masks, row_group_bytes, file_bytes, None
                )
    except BaseException:
        # `out` was empty: whatever is in it now is a half-written package, which must not be
        # pushed or mistaken for a finished one.
        _remove_contents(out, remove_root=created)
        raise
    splits = tuple(
        SplitFiles(
            config=r["config"],
            split=r["split"],
            files=tuple(r["files"]),
            num_rows=r["num_rows"],
            num_layers=r["num_layers"],
            hidden_size=r["hidden_size"],
            num_bytes=r["num_bytes"],
            written_bytes=r["written_bytes"],
        )
        for r in reports
    )
    return PackageResult(out_dir=out, splits=splits)


@contextmanager
def variant_locks(
    root: Path, model_dirs: list[str] | None, masks: list[str] | None
) -> Iterator[None]:
    """Hold the store's lock of every variant folder being packaged, so a run saving into
    the store meanwhile waits: each split is a snapshot, never a manifest paired with
    tensors from a later save. Taken in sorted order; a saver takes one lock at a time.
    Then every manifest is checked as every reader checks it."""
    from filelock import FileLock

    folders = sorted(
        p.parent
        for p in root.glob(f"*/*/*/{MANIFEST_FILENAME}")
        if (model_dirs is None or p.parent.parent.parent.name in model_dirs)
        and (masks is None or p.parent.parent.name in masks)
    )
    with ExitStack() as stack:
        for folder in folders:
            try:
                stack.enter_context(FileLock(str(folder / LOCK_FILENAME), timeout=LOCK_TIMEOUT_S))
            except PermissionError:  # a read-only store: nobody can be saving into it
                continue
        # Each manifest passes the readers' checked open and validate's checks before the
        # Rust packager streams it (a folder linked out of the store it refuses itself).
        for folder in folders:
            if escapes(folder, root) is None:
                path = folder / MANIFEST_FILENAME
                parse_manifest(path, read_manifest_bytes(path) or b"")
        yield


def _remove_contents(out: Path, *, remove_root: bool) -> None:
    if not out.is_dir():
        return
    if remove_root:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in out.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _package_with_progress(
    root: Path,
    out: Path,
    model_dirs: list[str] | None,
    masks: list[str] | None,
    row_group_bytes: int,
    file_bytes: int,
) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("packaging personas", total=None)

        def advance(step: int, total: int) -> None:
            bar.update(task, advance=step, total=total)

        return _core.package_store(
            root, out, model_dirs, masks, row_group_bytes, file_bytes, advance
        )
