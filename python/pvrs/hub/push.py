"""Pushing a packaged dataset to the Hub in one commit on top of the commit it read, so a push
racing another fails clearly instead of dropping the other's card entries."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvrs.errors import InputError, PackagingError, PvrsIOError
from pvrs.hub.cards import (
    CARD_FILENAME,
    REPO_TYPE,
    merge_cards,
)
from pvrs.hub.packaging import (
    DEFAULT_FILE_BYTES,
    DEFAULT_ROW_GROUP_BYTES,
    PackageResult,
    package,
)


@dataclass(frozen=True)
class PushResult:
    """A finished push: the package and the commit (None for a dry run)."""

    repo_id: str | None
    package: PackageResult
    commit_url: str | None = None
    commit_oid: str | None = None
    deleted: tuple[str, ...] = ()


# How the Rust packager words an OS error: `PATH: [External: ]REASON (os error N)`.
_OS_ERROR = re.compile(r"(?P<path>.+?): (?:External: )?.+ \(os error (?P<errno>\d+)\)")


def _write_failure(exc: Exception, folder: Path) -> OSError | None:
    """The packager's error as the plain `OSError` of a failed write (`pvrs.cli.main`: one
    line naming the file, exit 1) when the OS refused a file inside `folder` (a full disk,
    a quota, a read-only mount); None for any other error."""
    found = _OS_ERROR.fullmatch(str(exc))
    if found is None or not Path(found["path"]).resolve().is_relative_to(folder.expanduser().resolve()):
        return None
    code = int(found["errno"])
    return OSError(code, os.strerror(code), found["path"])


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise InputError(
            "no Hugging Face token found; run `hf auth login`, set HF_TOKEN, or pass token=... "
            "(use --dry-run --out DIR to only write the dataset folder)"
        )
    return found


def _merged_card(repo_id: str, remote: bytes, local: str) -> bytes:
    """The card to publish over the repo's own (`merge_cards`); a remote card pvrs cannot
    read is refused before the commit, naming it, rather than replaced."""
    try:
        return merge_cards(remote.decode("utf-8"), local).encode()
    except UnicodeDecodeError:
        problem = "is not UTF-8 text"
    except PackagingError as exc:
        problem = f"cannot be merged ({exc})"
    raise PackagingError(
        f"Hub dataset {repo_id!r}: its {CARD_FILENAME} {problem}; fix it on the Hub, then push again"
    )


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
        try:
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
        except (PackagingError, PvrsIOError) as exc:
            raise _write_failure(exc, Path(folder)) or exc from None

    if dry_run:
        if out_dir is None:
            raise InputError("a dry run writes the dataset folder only: pass --out DIR")
        return PushResult(repo_id=repo_id, package=package_into(out_dir))
    if not repo_id or repo_id.count("/") != 1 or "" in repo_id.split("/"):
        raise InputError(f"--repo must look like ORG/NAME, got {repo_id!r}")
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RevisionNotFoundError,
    )

    # The HTTP client's base error (httpx's `HTTPError`): huggingface_hub's own derives from
    # it, and so do the client's "no network", DNS and timeout errors.
    client_error: type[Exception] = HfHubHTTPError.__bases__[0]

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
                    ).read_bytes()
                except (EntryNotFoundError, RevisionNotFoundError):
                    remote_card = b""
                if remote_card:
                    card = _merged_card(repo_id, remote_card, card_path.read_text(encoding="utf-8"))
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
        except OfflineModeIsEnabled:
            raise PvrsIOError(
                f"pushing to {repo_id!r} needs the network and HF_HUB_OFFLINE is set; unset it, "
                "or use --dry-run --out DIR to only write the dataset folder"
            ) from None
        except client_error as exc:
            raise PvrsIOError(
                f"pushing to {repo_id!r} failed: the Hub cannot be reached ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0]}); check the network, or use "
                "--dry-run --out DIR to only write the dataset folder"
            ) from None
    return PushResult(
        repo_id=repo_id,
        package=result,
        commit_url=str(info.commit_url),
        commit_oid=info.oid,
        deleted=tuple(stale),
    )
