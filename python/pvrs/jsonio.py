"""Reading JSON and JSONL input: every way a file can fail to decode (bad JSON, bad UTF-8,
nesting too deep for Python's recursive parser) is one error line naming the file, never a
traceback. Every reader of user or saved JSON goes through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pvrs.errors import InputError, PvrsError


def decode(text: str | bytes, source: str, error: type[PvrsError] = InputError) -> Any:
    """`json.loads(text)`, a failure raised as `error` naming `source` (a path, `path:line`,
    or a flag and its path). The default `InputError` is a `ValueError`, as json's own."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        why = f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except RecursionError:  # `"[" * 100000`: the C decoder recurses once per level
        why = "JSON nested too deeply to read"
    raise error(f"{source}: {why}; fix the file") from None


def read_json(path: Path, source: str | None = None, error: type[PvrsError] = InputError) -> Any:
    """The JSON document in `path` (`source`, default the path, names it in errors)."""
    source = source or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{source}: cannot read ({exc.strerror or exc})") from None
    return decode(raw, source, error)


def read_jsonl(path: Path, error: type[PvrsError] = InputError) -> list[Any]:
    """One JSON value per non-blank line of `path`; an error names the line (`path:N`)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); fix the file") from None
    return decode_lines(text, str(path), error)


def decode_lines(text: str, source: str, error: type[PvrsError] = InputError) -> list[Any]:
    """JSONL text read from `source`: one value per non-blank line."""
    return [
        decode(line, f"{source}:{n}", error)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]
