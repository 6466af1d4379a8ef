"""On-disk judge scores: one JSONL line `{"key", "score"}` per judged answer, keyed by the
sha256 of (judge id, rubric text, its {trait}, question, answer), so a rerun asks the judge nothing it
has answered before. Each score is appended as it arrives (one `write` on an O_APPEND file:
concurrent writers never interleave within a line), so an interrupted run keeps its scores;
a line torn by a kill is skipped when read. An answer the judge gave no score (`"score": null`)
is cached too: asking again would get the same reply."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from pvrs.errors import InputError
from pvrs.jsonio import decode
from pvrs.paths import CACHE_ENV

CACHE_NAME = "judge-scores.jsonl"


def cache_key(judge_id: str, rubric_text: str, trait: str, question: str, answer: str) -> str:
    return hashlib.sha256(json.dumps([judge_id, rubric_text, trait, question, answer], ensure_ascii=False).encode()).hexdigest()


def default_cache_path(output: Path) -> Path:
    """`$PVRS_CACHE_DIR/judge-scores.jsonl` when set, else beside the scores file."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else output.parent) / CACHE_NAME


class ScoreCache:
    """Scores saved at `path` (created on the first `put`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._scores: dict[str, float | None] = {}
        self._lock = threading.Lock()
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        self._torn = bool(text) and not text.endswith("\n")  # end the torn line before appending
        for n, line in enumerate(text.splitlines()):
            try:
                row = decode(line, f"{path}:{n + 1}")
                self._scores[str(row["key"])] = None if row["score"] is None else float(row["score"])
            except (ValueError, KeyError, TypeError):
                # A line torn by an interrupted run is skipped; a first line that is no cache
                # row, torn or whole, means another file (answers, scores): appending would spoil it.
                if n == 0 and not line.startswith('{"key": '):
                    raise InputError(f"{path}: not a judge score cache (line 1 is no {{key, score}} row); "
                                     "pass --cache a new file or a cache") from None

    def __contains__(self, key: str) -> bool:
        return key in self._scores

    def get(self, key: str) -> float | None:
        """The cached score (None also for a cached "no score": check `key in cache`)."""
        return self._scores.get(key)

    def put(self, key: str, score: float | None) -> None:
        line = (json.dumps({"key": key, "score": score}) + "\n").encode()
        with self._lock:
            if self._torn:
                line, self._torn = b"\n" + line, False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self._scores[key] = score
