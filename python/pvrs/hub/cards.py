"""The dataset card (`README.md`): its YAML `configs` (which files hold which config and
split), merging a new card into a published one, and config names `<model_dir>__<mask_strategy>`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pvrs.errors import InputError, PackagingError
from pvrs.extraction.masks import ALL_STRATEGIES

REPO_TYPE = "dataset"
CARD_FILENAME = "README.md"
CARD_TAG = "pvrs"


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """YAML front matter (as a dict) and the body of a dataset card."""
    import yaml

    if text.startswith("---\n"):
        head, sep, body = text[4:].partition("\n---\n")
        if sep:
            try:
                meta = yaml.safe_load(head) or {}
            except (yaml.YAMLError, RecursionError) as exc:  # the composer recurses per level
                where = getattr(exc, "problem_mark", None)
                line = f" (line {where.line + 2})" if where else " (nested too deeply)"
                raise PackagingError(f"the dataset card's YAML header is not valid YAML{line}") from None
            if not isinstance(meta, dict):
                raise PackagingError("the dataset card's YAML header is not a mapping")
            return meta, body.lstrip("\n")
    return {}, text


def by_config(entries: object) -> list[dict[str, Any]]:
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list | None):
        raise PackagingError(f"the dataset card's configs are {type(entries).__name__}, not a list")
    return [e for e in entries or [] if isinstance(e, dict)]


def merge_cards(remote: str, local: str) -> str:
    """The card to publish when the repo already has one: the remote card with the configs
    (and their `dataset_info`) this push writes replaced by the local ones, and every other
    config and key kept, so pushing one model does not hide another's data."""
    import yaml

    remote_meta, remote_body = split_card(remote)
    local_meta, local_body = split_card(local)
    merged = dict(remote_meta)
    for key in ("configs", "dataset_info"):
        ours = by_config(local_meta.get(key))
        names = {e.get("config_name") for e in ours}
        kept = [e for e in by_config(remote_meta.get(key)) if e.get("config_name") not in names]
        merged[key] = sorted(kept + ours, key=lambda e: str(e.get("config_name")))
    tags = list(merged.get("tags") or [])
    merged["tags"] = tags + [t for t in local_meta.get("tags") or [] if t not in tags]
    head = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{head}---\n\n{remote_body or local_body}"


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


def card_configs(card_text: str) -> dict[str, dict[str, list[str]]]:
    """`{config_name: {split: [paths]}}` from a card's YAML `configs`."""
    meta, _ = split_card(card_text)
    out: dict[str, dict[str, list[str]]] = {}
    for entry in by_config(meta.get("configs")):
        splits: dict[str, list[str]] = {}
        data_files = entry.get("data_files") or []
        if isinstance(data_files, (str, dict)):
            data_files = [data_files]
        for df in data_files:
            if isinstance(df, str):
                df = {"split": "train", "path": df}
            paths = (df.get("path") or []) if isinstance(df, dict) else None
            if not isinstance(paths, str | list):
                raise PackagingError(
                    f"the dataset card's data_files entry {df!r} of config "
                    f"{entry.get('config_name')!r} is not a path or a {{split, path}} mapping"
                )
            splits.setdefault(str(df.get("split", "train")), []).extend(
                [paths] if isinstance(paths, str) else [str(p) for p in paths]
            )
        out[str(entry.get("config_name", "default"))] = splits
    return out


def match_data_files(pattern: str, files: Sequence[str]) -> list[str]:
    """The files (relative posix paths) a card's `data_files` path matches, sorted, with the
    glob rules `datasets` uses: `*`, `?` and `[...]` stay within one folder, a `**` folder
    spans any number of folders, and wildcards skip hidden names unless the pattern spells
    the dot. A path with no wildcard matches itself."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    return sorted(f for f in files if _matches(parts, f.split("/")))


def _matches(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(
            _matches(rest, path[i:])
            for i in range(len(path) + 1)
            if not any(p.startswith(".") for p in path[:i])
        )
    return (
        bool(path)
        and fnmatchcase(path[0], head)
        and (head.startswith(".") or not path[0].startswith("."))
        and _matches(rest, path[1:])
    )
