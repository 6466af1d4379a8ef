"""Personas and QA pairs: loading from JSONL/JSON/parquet files or a local `datasets` folder,
the built-in demo set, and the reference tool's selection flags."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pvrs.engines.jobs import BASELINE_ID as BASELINE_ID
from pvrs.engines.jobs import VARIANTS as VARIANTS
from pvrs.engines.jobs import Persona as Persona
from pvrs.engines.jobs import QAPair as QAPair
from pvrs.errors import InputError
from pvrs.jsonio import decode_lines, read_json, read_jsonl
from pvrs.store import validate_persona_id

QA_TYPES = ("explicit", "implicit", "all")


def read_rows(path: Path, *, objects: bool = True) -> list[Any]:
    """Rows of a .jsonl, .json (a list, or {"rows": [...]}) or .parquet file; each row must be
    a JSON object unless `objects` is False (a prompts file may list bare strings)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _checked_rows(path, read_jsonl(path), objects)
        if suffix == ".json":
            data = read_json(path)
            if isinstance(data, dict) and ("rows" in data or "data" in data):
                data = data.get("rows", data.get("data"))
            if not isinstance(data, list):
                raise InputError(f"{path}: expected a JSON list of rows, or an object with 'rows': [...]")
            return _checked_rows(path, data, objects)
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except pa.ArrowException as exc:  # a truncated or foreign file: ArrowInvalid
                raise InputError(f"{path}: not a readable parquet file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    raise InputError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def _checked_rows(path: Path, rows: list[Any], objects: bool) -> list[Any]:
    """`rows`, once each is a JSON object when `objects`: code reading fields needs one."""
    if objects:
        for n, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise InputError(f"{path} row {n}: expected a JSON object of fields, got {json.dumps(row)[:60]}")
    return rows


def _require(row: dict[str, Any], key: str, where: str) -> Any:
    value = row.get(key)
    if value is None:
        raise InputError(f"{where}: missing field {key!r}")
    return value


def _optional_text(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):  # str() would make ['x'] the prompt
        raise InputError(f"{where}: persona {row.get('id')!r} field {key!r} is a {type(value).__name__}, not text; "
                         "give the system prompt as a string")
    return value


def personas_from_rows(rows: Iterable[dict[str, Any]], source: str) -> list[Persona]:
    out: list[Persona] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        pid = validate_persona_id(str(_require(row, "id", where)))
        if pid in seen:
            raise InputError(f"{where}: duplicate persona id {pid!r}")
        seen.add(pid)
        attrs = {k: v for k, v in row.items() if k not in {"id", "name", "templated", "biography"}}
        out.append(
            Persona(
                id=pid,
                name=str(row.get("name") or pid),
                templated=_optional_text(row, "templated", where),
                biography=_optional_text(row, "biography", where),
                attributes=attrs,
            )
        )
    if not out:  # refused before any model loads: the run would do nothing and exit 0
        raise InputError(f"{source} holds no personas; give rows of id, name, templated, biography")
    return out


def qa_from_rows(rows: Iterable[dict[str, Any]], source: str) -> list[QAPair]:
    out = []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        qtype = str(row.get("type") or "explicit")
        if qtype not in ("explicit", "implicit"):
            raise InputError(f"{where}: type must be 'explicit' or 'implicit', got {qtype!r}")
        answer = str(_require(row, "answer", where))
        if not answer.strip():
            raise InputError(f"{where}: empty answer for question {row.get('qid')!r}; remove the row or fill the answer")
        persona_id = row.get("persona_id")
        out.append(
            QAPair(
                qid=str(_require(row, "qid", where)),
                question=str(_require(row, "question", where)),
                answer=answer,
                persona_id=str(persona_id) if persona_id not in (None, "") else None,
                type=qtype,
                split=str(row.get("split") or "train"),
            )
        )
    return out


def load_personas(path: str | Path | None = None) -> list[Persona]:
    """Personas from a file, or the built-in demo set when `path` is None."""
    if path is None:
        return personas_from_rows(_read_builtin("personas.jsonl"), "built-in personas")
    return personas_from_rows(read_rows(Path(path)), str(path))


def load_qa(path: str | Path | None = None) -> list[QAPair]:
    """QA pairs from a file, or the built-in demo set when `path` is None."""
    if path is None:
        return qa_from_rows(_read_builtin("qa.jsonl"), "built-in QA")
    return qa_from_rows(read_rows(Path(path)), str(path))


def load_dataset_dir(path: str | Path) -> tuple[list[Persona], list[QAPair]]:
    """A folder holding `personas.*` and `qa.*` files, or a `datasets` DatasetDict saved with
    `save_to_disk` that has `personas` and `qa` splits."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"--dataset {root}: not a folder")
    if (root / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        dd = load_from_disk(str(root))
        missing = {"personas", "qa"} - set(dd.keys())
        if missing:
            raise InputError(f"--dataset {root}: the DatasetDict lacks {sorted(missing)}; it needs 'personas' and 'qa'")
        return (personas_from_rows(dd["personas"], f"{root}[personas]"), qa_from_rows(dd["qa"], f"{root}[qa]"))
    found: dict[str, Path] = {}
    for stem in ("personas", "qa"):
        for ext in (".jsonl", ".json", ".parquet"):
            if (root / f"{stem}{ext}").is_file():
                found[stem] = root / f"{stem}{ext}"
                break
        else:
            raise InputError(f"--dataset {root}: no {stem}.jsonl, {stem}.json or {stem}.parquet inside")
    return load_personas(found["personas"]), load_qa(found["qa"])


def _read_builtin(name: str) -> list[dict[str, Any]]:
    text = resources.files("pvrs.data").joinpath(name).read_text(encoding="utf-8")
    return decode_lines(text, name)


def select_personas(
    personas: Sequence[Persona], persona_ids: Sequence[str] | None = None, sample_size: int | None = None
) -> list[Persona]:
    """`--persona-id` (any order, validated) or `--sample-size N` (the first N personas)."""
    if persona_ids:
        by_id = {p.id: p for p in personas}
        unknown = [pid for pid in persona_ids if pid not in by_id]
        if unknown:
            known = ", ".join(sorted(by_id)[:20])
            raise InputError(f"unknown persona id(s) {', '.join(map(repr, unknown))}; known ids: {known}")
        chosen = [by_id[pid] for pid in dict.fromkeys(persona_ids)]
    else:
        chosen = list(personas)
    if sample_size is not None:
        if sample_size < 1:
            raise InputError(f"--sample-size must be >= 1, got {sample_size}")
        chosen = chosen[:sample_size]
    return chosen


def qa_for_persona(
    qa: Sequence[QAPair], persona: Persona, *, n_train: int | None = None, qa_type: str = "all"
) -> list[QAPair]:
    """The persona's own QA rows plus the shared ones, train split, filtered by type, first N."""
    if qa_type not in QA_TYPES:
        raise InputError(f"--qa-type must be one of {', '.join(QA_TYPES)}, got {qa_type!r}")
    rows = [
        r
        for r in qa
        if r.persona_id in (None, persona.id) and r.split == "train" and (qa_type == "all" or r.type == qa_type)
    ]
    seen: set[str] = set()
    for r in rows:
        if r.qid in seen:
            # Sample ids key the manifest, resume and judge scores: one id, one conversation.
            raise InputError(
                f"persona {persona.id!r} gets two QA rows with qid {r.qid!r} (its own and a shared "
                "one, or a repeat); give every question a distinct qid"
            )
        seen.add(r.qid)
    if n_train is not None:
        if n_train < 1:
            raise InputError(f"--n-train must be >= 1, got {n_train}")
        rows = rows[:n_train]
    return rows


def shard(personas: Sequence[Persona], spec: str | None) -> list[Persona]:
    """`--shard I/N` keeps personas whose position modulo N is I (0 <= I < N), so N processes
    cover every persona exactly once."""
    if not spec:
        return list(personas)
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise InputError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    index, count = int(match[1]), int(match[2])
    return [p for i, p in enumerate(personas) if i % count == index]
