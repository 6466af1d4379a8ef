"""Publishing persona vectors as a Hugging Face dataset, and reading them back.

Layout (DESIGN.md "Hub dataset layout", compatible with persona-vectors 0.6.x): one config
per `<model_dir>__<mask_strategy>`, one split per prompt variant, one row per persona with
columns `persona_id`, `name`, `sample_ids` and `vector` (`Array2D(float32, (L, H))`), in
`<config>/<split>-NNNNN-of-NNNNN.parquet`, plus a `README.md` card whose YAML lets
`datasets.load_dataset(repo, config, split=variant)` load it with no custom code.

`package` writes that folder with the Rust core (streamed, bounded memory, deterministic
bytes); `push` packages and uploads it in one commit; `HFPersonaVectorStore` reads it back
from a local folder or a Hub repo with the local store's query methods."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pvrs import _core
from pvrs.errors import InputError, InvalidArgumentError, PackagingError, PvrsIOError
from pvrs.masks import ALL_STRATEGIES, parse_strategies
from pvrs.models import model_dir_name
from pvrs.paths import activations_dir
from pvrs.store import (
    DEFAULT_MASK_STRATEGY,
    LOCK_FILENAME,
    LOCK_TIMEOUT_S,
    MANIFEST_FILENAME,
    SUPPORTED_VARIANTS,
    VectorNotFoundError,
    _PersonaQueries,
    _strategy_name,
)

REPO_TYPE = "dataset"
CARD_FILENAME = "README.md"
CARD_TAG = "pvrs"
DEFAULT_ROW_GROUP_BYTES = 64 << 20
DEFAULT_FILE_BYTES = 500 << 20
INDEX_COLUMNS = ("persona_id", "name", "sample_ids")


# ---- packaging ---------------------------------------------------------------------------


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
    stays bounded by about one row group per core (at most 4), however many personas there
    are, and the same tree always gives the same bytes. The GIL is released while it runs.
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
        with _variant_locks(root, model_dirs, masks):
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
def _variant_locks(
    root: Path, model_dirs: list[str] | None, masks: list[str] | None
) -> Iterator[None]:
    """Hold the store's lock of every variant folder being packaged, so a run saving into
    the store meanwhile waits: each split is a snapshot, never a manifest paired with
    tensors from a later save. Taken in sorted order; a saver takes one lock at a time."""
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


# ---- pushing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """A finished push: the package and the commit (None for a dry run)."""

    repo_id: str | None
    package: PackageResult
    commit_url: str | None = None
    commit_oid: str | None = None
    deleted: tuple[str, ...] = ()


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise InputError(
            "no Hugging Face token found; run `hf auth login`, set HF_TOKEN, or pass token=... "
            "(use --dry-run --out DIR to only write the dataset folder)"
        )
    return found


def _split_card(text: str) -> tuple[dict[str, Any], str]:
    """YAML front matter (as a dict) and the body of a dataset card."""
    import yaml

    if text.startswith("---\n"):
        head, sep, body = text[4:].partition("\n---\n")
        if sep:
            meta = yaml.safe_load(head) or {}
            if not isinstance(meta, dict):
                raise PackagingError("the dataset card's YAML header is not a mapping")
            return meta, body.lstrip("\n")
    return {}, text


def _by_config(entries: object) -> list[dict[str, Any]]:
    if isinstance(entries, dict):
        entries = [entries]
    return [e for e in entries or [] if isinstance(e, dict)]


def merge_cards(remote: str, local: str) -> str:
    """The card to publish when the repo already has one: the remote card with the configs
    (and their `dataset_info`) this push writes replaced by the local ones, and every other
    config and key kept, so pushing one model does not hide another's data."""
    import yaml

    remote_meta, remote_body = _split_card(remote)
    local_meta, local_body = _split_card(local)
    merged = dict(remote_meta)
    for key in ("configs", "dataset_info"):
        ours = _by_config(local_meta.get(key))
        names = {e.get("config_name") for e in ours}
        kept = [e for e in _by_config(remote_meta.get(key)) if e.get("config_name") not in names]
        merged[key] = sorted(kept + ours, key=lambda e: str(e.get("config_name")))
    tags = list(merged.get("tags") or [])
    merged["tags"] = tags + [t for t in local_meta.get("tags") or [] if t not in tags]
    head = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{head}---\n\n{remote_body or local_body}"


def push(
    model_names: str | Sequence[str] | None,
    repo_id: str | None,
    *,
    mask_strategies: object | None = None,
    root_dir: str | os.PathLike[str] | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    commit_message: str | None = None,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    progress: bool = True,
) -> PushResult:
    """Package the local vectors and publish them to the dataset repo `repo_id` in one commit.

    Creates the repo (and the `revision` branch) when missing. Files of the pushed configs
    that the new package no longer has are deleted in the same commit, and other configs in
    an existing card are kept. `dry_run=True` only writes the folder to `out_dir`; without a
    dry run, `out_dir` keeps the uploaded folder (default: a temporary folder, removed after
    the upload). The token is `token`, else `HF_TOKEN` or the one `hf auth login` saved."""

    def package_into(folder: str | os.PathLike[str]) -> PackageResult:
        return package(
            model_names,
            folder,
            mask_strategies=mask_strategies,
            root_dir=root_dir,
            row_group_bytes=row_group_bytes,
            file_bytes=file_bytes,
            overwrite=overwrite,
            progress=progress,
        )

    if dry_run:
        if out_dir is None:
            raise InputError("a dry run writes the dataset folder only: pass --out DIR")
        return PushResult(repo_id=repo_id, package=package_into(out_dir))
    if not repo_id or repo_id.count("/") != 1 or "" in repo_id.split("/"):
        raise InputError(f"--repo must look like ORG/NAME, got {repo_id!r}")
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RevisionNotFoundError

    api = HfApi(token=_resolve_token(token))
    with tempfile.TemporaryDirectory(prefix="pvrs-push-") as tmp:
        result = package_into(Path(out_dir) if out_dir is not None else Path(tmp) / "dataset")
        try:
            api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
            # Everything is read at one commit and the new commit must sit right on it: a push
            # landing in between makes ours fail instead of dropping its card entries.
            head = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision).sha
            remote_files = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=head))
            card_path = result.out_dir / CARD_FILENAME
            card: str | bytes = card_path.read_bytes()
            if CARD_FILENAME in remote_files:
                try:
                    remote_card = Path(
                        api.hf_hub_download(
                            repo_id, CARD_FILENAME, repo_type=REPO_TYPE, revision=head
                        )
                    ).read_text(encoding="utf-8")
                except (EntryNotFoundError, RevisionNotFoundError):
                    remote_card = ""
                if remote_card:
                    card = merge_cards(remote_card, card_path.read_text(encoding="utf-8")).encode()
            written = set(result.files)
            stale = sorted(
                f for f in remote_files if f.split("/", 1)[0] in result.configs and f not in written
            )
            operations: list[Any] = [
                CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(result.out_dir / f))
                for f in result.files
                if f != CARD_FILENAME
            ]
            operations.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=card))
            operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
            rows = sum(s.num_rows for s in result.splits)
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message
                or f"pvrs: persona vectors for {', '.join(result.configs)} ({rows} rows)",
                repo_type=REPO_TYPE,
                revision=revision,
                parent_commit=head,
            )
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code == 412:
                raise PackagingError(
                    f"{repo_id!r} changed while pvrs was pushing to it (another push?); nothing "
                    "was committed, push again"
                ) from None
            raise PackagingError(f"pushing to {repo_id!r} failed: {exc}") from None
    return PushResult(
        repo_id=repo_id,
        package=result,
        commit_url=str(info.commit_url),
        commit_oid=info.oid,
        deleted=tuple(stale),
    )


# ---- discovery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorConfig:
    """A dataset config name split into its model folder and mask strategy."""

    config_name: str
    model_dir: str
    mask_strategy: str

    @property
    def model_name(self) -> str:
        """The model id, assuming the folder is `org__name` (`__` -> `/` once)."""
        return self.model_dir.replace("__", "/", 1)


def parse_vector_config_name(name: str) -> VectorConfig:
    """`<model_dir>__<mask_strategy>` -> its parts. The mask is the last `__` segment (model
    folders may contain `__` themselves); it must be a known mask strategy."""
    model_dir, sep, mask = name.rpartition("__")
    if not sep or not model_dir or mask not in {s.value for s in ALL_STRATEGIES}:
        valid = ", ".join(s.value for s in ALL_STRATEGIES)
        raise InputError(
            f"config {name!r} is not <model>__<mask_strategy> with a mask strategy among {valid}"
        )
    return VectorConfig(config_name=name, model_dir=model_dir, mask_strategy=mask)


def _card_configs(card_text: str) -> dict[str, dict[str, list[str]]]:
    """`{config_name: {split: [paths]}}` from a card's YAML `configs`."""
    meta, _ = _split_card(card_text)
    out: dict[str, dict[str, list[str]]] = {}
    for entry in _by_config(meta.get("configs")):
        splits: dict[str, list[str]] = {}
        data_files = entry.get("data_files") or []
        if isinstance(data_files, (str, dict)):
            data_files = [data_files]
        for df in data_files:
            if isinstance(df, str):
                df = {"split": "train", "path": df}
            paths = df.get("path") or []
            splits.setdefault(str(df.get("split", "train")), []).extend(
                [paths] if isinstance(paths, str) else [str(p) for p in paths]
            )
        out[str(entry.get("config_name", "default"))] = splits
    return out


def list_hub_vector_models(
    repo_id_or_local_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | None = None,
) -> list[VectorConfig]:
    """The persona-vector configs (model and mask strategy) a dataset repo or folder holds,
    read from its card (falling back to its top-level folder names)."""
    source = _Source.open(repo_id_or_local_dir, revision=revision, token=token)
    names = sorted(set(source.configs()))
    found = []
    for name in names:
        try:
            found.append(parse_vector_config_name(name))
        except InputError:
            continue  # a config of other data in the same repo
    return found


# ---- reading -----------------------------------------------------------------------------


@dataclass
class _Source:
    """A packaged dataset on disk or on the Hub; yields local paths of its files."""

    local_dir: Path | None
    repo_id: str | None
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    _card: dict[str, dict[str, list[str]]] | None = field(default=None, repr=False)
    _repo_files: list[str] | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls, where: str | os.PathLike[str], *, revision: str | None, token: str | None
    ) -> _Source:
        path = Path(where).expanduser()
        if path.is_dir():
            return cls(local_dir=path, repo_id=None)
        text = str(where)
        if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise InputError(
                f"{text!r} is neither a local dataset folder nor a Hub repo id like ORG/NAME"
            )
        return cls(local_dir=None, repo_id=text, revision=revision, token=token)

    def _list(self) -> list[str]:
        if self._repo_files is None:
            if self.local_dir is not None:
                self._repo_files = sorted(
                    p.relative_to(self.local_dir).as_posix()
                    for p in self.local_dir.rglob("*")
                    if p.is_file()
                )
            else:
                from huggingface_hub import HfApi

                with self._hub_errors("list its files"):
                    self._repo_files = sorted(
                        HfApi(token=self.token).list_repo_files(
                            self.repo_id, repo_type=REPO_TYPE, revision=self.revision
                        )
                    )
        return self._repo_files

    @contextmanager
    def _hub_errors(self, doing: str) -> Iterator[None]:
        """Hub failures as one clear pvrs error: a missing repo, revision or file is the
        user's input or the dataset's fault; anything else (no network, offline mode, a
        timeout, a server error) is I/O."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"Hub dataset {self.repo_id!r}"
        try:
            yield
        except GatedRepoError:
            raise InputError(
                f"{where} is gated: accept its terms on huggingface.co with the account whose "
                "token you use (HF_TOKEN or `hf auth login`)"
            ) from None
        except RepositoryNotFoundError:
            raise InputError(
                f"{where} does not exist or is private (log in with `hf auth login` or set "
                "HF_TOKEN); or pass a local dataset folder"
            ) from None
        except RevisionNotFoundError:
            raise InputError(f"{where} has no revision {self.revision!r}") from None
        except OfflineModeIsEnabled:
            raise PvrsIOError(
                f"{where}: HF_HUB_OFFLINE is set, and listing a Hub dataset needs the network; "
                "unset it, or download the dataset folder and pass it as a local folder"
            ) from None
        except EntryNotFoundError:
            raise PackagingError(
                f"{where}: could not {doing}: the file is listed in the dataset card but not "
                "in the repo; re-push the dataset"
            ) from None
        except Exception as exc:  # network and server errors come in many types
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise PvrsIOError(
                f"{where}: could not {doing} ({type(exc).__name__}: {first_line}); check the "
                "network and the repo id, or pass a local dataset folder"
            ) from exc

    def card(self) -> dict[str, dict[str, list[str]]]:
        if self._card is None:
            self._card = {}
            if CARD_FILENAME in self._list():
                text = self.fetch(CARD_FILENAME).read_text(encoding="utf-8")
                self._card = _card_configs(text)
        return self._card

    def configs(self) -> list[str]:
        card = self.card()
        if card:
            return list(card)
        return sorted(
            {f.split("/", 1)[0] for f in self._list() if f.endswith(".parquet") and "/" in f}
        )

    def split_files(self, config: str, split: str) -> list[str]:
        """Parquet files of one split (from the card, else `<config>/<split>-*.parquet`)."""
        card = self.card()
        if config in card:
            return sorted(card[config].get(split, []))
        prefix = f"{config}/{split}-"
        return [f for f in self._list() if f.startswith(prefix) and f.endswith(".parquet")]

    def fetch(self, relpath: str) -> Path:
        if self.local_dir is not None:
            return self.local_dir / relpath
        from huggingface_hub import hf_hub_download

        with self._hub_errors(f"download {relpath}"):
            return Path(
                hf_hub_download(
                    self.repo_id,
                    relpath,
                    repo_type=REPO_TYPE,
                    revision=self.revision,
                    token=self.token,
                )
            )


@dataclass
class _SplitIndex:
    """Where each persona of one split lives, with its name and sample ids."""

    files: list[Path]
    # persona_id -> (file index, row group, row within the group)
    where: dict[str, tuple[int, int, int]]
    names: dict[str, str]
    sample_ids: dict[str, list[str]]
    shape: tuple[int, int] | None


def _vector_values(column: Any, n_rows: int, where: str) -> np.ndarray:
    """A `vector` column (list<list<float32>>, possibly `datasets`' Array2D extension) as an
    `(n_rows, L, H)` float32 array."""
    import pyarrow as pa

    chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in column.chunks]
    rows = pa.concat_arrays(chunks) if chunks else pa.array([], pa.list_(pa.list_(pa.float32())))
    if n_rows == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    inner = rows.flatten()
    outer_lengths = rows.value_lengths().to_numpy(zero_copy_only=False)
    inner_lengths = inner.value_lengths().to_numpy(zero_copy_only=False)
    layers = int(outer_lengths[0])
    hidden = int(inner_lengths[0]) if len(inner_lengths) else 0
    if (
        layers == 0
        or hidden == 0
        or (outer_lengths != layers).any()
        or (inner_lengths != hidden).any()
    ):
        raise PackagingError(f"{where}: the vector column is not a (num_layers, hidden_size) array")
    values = inner.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(n_rows, layers, hidden)


class HFPersonaVectorStore(_PersonaQueries):
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
        self.mask_strategy = _strategy_name(mask_strategy)
        self.variants = tuple(variants)
        self.config_name = f"{model_dir_name(model_name)}__{self.mask_strategy}"
        self._source = _Source.open(repo_id_or_local_dir, revision=revision, token=token)
        self._indexes: dict[str, _SplitIndex] = {}
        self._row_groups: dict[tuple[str, int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        where = self._source.local_dir or self._source.repo_id
        return (
            f"HFPersonaVectorStore({str(where)!r}, model_name={self.model_name!r}, "
            f"mask_strategy={self.mask_strategy!r})"
        )

    def location(self, variant: str) -> str:
        where = self._source.local_dir or self._source.repo_id
        return f"{where} (config {self.config_name}, split {variant})"

    def release_cache(self) -> None:
        """Drop cached indexes and decoded row groups (downloaded files stay in the Hub cache)."""
        self._indexes.clear()
        self._row_groups.clear()
        self._source._card = None
        self._source._repo_files = None

    # ---- index ---------------------------------------------------------------------------

    def _index(self, variant: str) -> _SplitIndex | None:
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
                    where[pid] = (fi, rg, row)
                    names[pid] = name or ""
                    samples[pid] = list(sids or [])
        index = _SplitIndex(files, where, names, samples, shape)
        self._indexes[variant] = index
        return index

    def _require(self, persona_id: str, variant: str) -> tuple[_SplitIndex, tuple[int, int, int]]:
        index = self._index(variant)
        if index is None or persona_id not in index.where:
            where = f"{self.config_name!r} split {variant!r}"
            if index is None:
                have = ", ".join(self.available_variants(self._all_splits())) or "none"
                hint = f"no such split; available: {have}"
            else:
                known = sorted(index.where)
                hint = f"known personas: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}"
            raise VectorNotFoundError(f"no vector for persona {persona_id!r} in {where} ({hint})")
        return index, index.where[persona_id]

    def _all_splits(self) -> list[str]:
        card = self._source.card()
        if self.config_name in card:
            return sorted(card[self.config_name])
        prefix = f"{self.config_name}/"
        return sorted(
            {
                f[len(prefix) :].rsplit("-", 3)[0]
                for f in self._source._list()
                if f.startswith(prefix)
            }
        )

    # ---- vectors -------------------------------------------------------------------------

    def _row_group(self, variant: str, index: _SplitIndex, fi: int, rg: int) -> np.ndarray:
        key = (variant, fi, rg)
        if key not in self._row_groups:
            import pyarrow.parquet as pq

            path = index.files[fi]
            pf = pq.ParquetFile(path)
            table = pf.read_row_group(rg, columns=["vector"])
            self._row_groups.clear()  # memory bound: one decoded row group at a time
            self._row_groups[key] = _vector_values(
                table.column("vector"), table.num_rows, str(path)
            )
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

    # ---- queries: `_PersonaQueries` (shared with the local store) over the split indexes --

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


def _declared_shape(metadata: dict[bytes, bytes] | None) -> tuple[int, int] | None:
    """The `vector` Array2D shape from `datasets`' schema metadata, when present."""
    import json

    try:
        info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
        shape = info["info"]["features"]["vector"]["shape"]
        return int(shape[0]), int(shape[1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None


__all__ = [
    "HFPersonaVectorStore",
    "PackageResult",
    "PushResult",
    "SplitFiles",
    "VectorConfig",
    "list_hub_vector_models",
    "merge_cards",
    "package",
    "parse_vector_config_name",
    "push",
]
