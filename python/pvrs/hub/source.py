"""Where a packaged dataset is: a local folder or a Hub repo, its card and file list, and the
per-split index of which file and row group hold each persona's vector."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.errors import InputError, PackagingError, PvrsIOError
from pvrs.hub.cards import (
    CARD_FILENAME,
    REPO_TYPE,
    VectorConfig,
    card_configs,
    match_data_files,
    parse_vector_config_name,
)

# A shard as `package` and `datasets` name it: `<split>-00000-of-00002.parquet` (older
# `datasets` add `-<fingerprint>` before the suffix).
SHARD_NAME = re.compile(r"(?P<split>[^/]+)-\d{5}-of-\d{5}[^/]*\.parquet")


def list_hub_vector_models(
    repo_id_or_local_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | None = None,
) -> list[VectorConfig]:
    """The persona-vector configs (model and mask strategy) a dataset repo or folder holds,
    read from its card (falling back to its top-level folder names)."""
    source = DatasetSource.open(repo_id_or_local_dir, revision=revision, token=token)
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
class DatasetSource:
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
    ) -> DatasetSource:
        path = Path(where).expanduser()
        if path.is_dir():
            return cls(local_dir=path, repo_id=None)
        text = str(where)
        if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise InputError(
                f"{text!r} is neither a local dataset folder nor a Hub repo id like ORG/NAME"
            )
        return cls(local_dir=None, repo_id=text, revision=revision, token=token)

    @property
    def where(self) -> str:
        """The folder or repo id, for messages."""
        return str(self.local_dir) if self.local_dir is not None else str(self.repo_id)

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
                path = self.fetch(CARD_FILENAME)
                try:
                    self._card = card_configs(path.read_text(encoding="utf-8"))
                except UnicodeDecodeError:
                    raise PackagingError(f"{path}: the dataset card is not UTF-8 text; fix or remove it") from None
                except PackagingError as exc:
                    raise PackagingError(f"{path}: {exc}; fix the card or re-push the dataset") from None
        return self._card

    def configs(self) -> list[str]:
        card = self.card()
        if card:
            return list(card)
        return sorted(
            {f.split("/", 1)[0] for f in self._list() if f.endswith(".parquet") and "/" in f}
        )

    def splits(self, config: str) -> list[str]:
        """The config's splits: from the card, else from its shards' file names."""
        card = self.card()
        if config in card:
            return sorted(card[config])
        return sorted({split for _, split in self._shards(config)})

    def split_files(self, config: str, split: str) -> list[str]:
        """Files of one split: the card's `data_files` patterns resolved against the
        dataset's files (as `datasets` does), else `<config>/<split>-NNNNN-of-NNNNN.parquet`."""
        card = self.card()
        if config not in card:
            return [f for f, s in self._shards(config) if s == split]
        found: list[str] = []
        for pattern in card[config].get(split, []):
            matched = match_data_files(pattern, self._list())
            if not matched:
                raise PackagingError(
                    f"dataset {self.where}: its card lists {pattern!r} for config {config!r} "
                    f"split {split!r}, and no file matches it; fix the card or re-push the dataset"
                )
            found += [f for f in matched if f not in found]
        return found

    def _shards(self, config: str) -> list[tuple[str, str]]:
        """(path, split) of the `<config>/<split>-NNNNN-of-NNNNN.parquet` files."""
        prefix = f"{config}/"
        shards = []
        for f in self._list():
            m = SHARD_NAME.fullmatch(f[len(prefix) :]) if f.startswith(prefix) else None
            if m:
                shards.append((f, m["split"]))
        return shards

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
class SplitIndex:
    """Where each persona of one split lives, with its name and sample ids."""

    files: list[Path]
    # persona_id -> (file index, row group, row within the group)
    where: dict[str, tuple[int, int, int]]
    names: dict[str, str]
    sample_ids: dict[str, list[str]]
    shape: tuple[int, int] | None


def vector_values(column: Any, n_rows: int, where: str) -> np.ndarray:
    """A `vector` column (list<list<float32>>, possibly `datasets`' Array2D extension) as an
    `(n_rows, L, H)` float32 array."""
    import pyarrow as pa

    chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in column.chunks]
    rows = pa.concat_arrays(chunks) if chunks else pa.array([], pa.list_(pa.list_(pa.float32())))
    leaf = getattr(getattr(rows.type, "value_type", None), "value_type", None)
    if leaf is None or not pa.types.is_floating(leaf):
        raise PackagingError(
            f"{where}: the vector column is {rows.type}, not (num_layers, hidden_size) lists of "
            "floats; re-package the dataset"
        )
    if n_rows == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    inner = rows.flatten()
    if rows.null_count or inner.null_count:  # a null vector or layer has no length to check
        raise PackagingError(f"{where}: the vector column holds null vectors; re-package the dataset")
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
