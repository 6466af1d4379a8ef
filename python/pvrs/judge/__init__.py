"""Judging answers with a rubric prompt, 0-100 (or 0-10, yes/no: `pvrs.judge.numbers`, reported
on 0-100): an OpenAI-compatible endpoint (`EndpointJudge`) or a local model (`LocalJudge`),
with an on-disk score cache (`ScoreCache`) so no answer is judged twice. `judge_answers` ties them together; `pvrs judge`
is its command line and writes the `--scores` file `pvrs extract` reads. `describe_trait` has
a generator model write a trait file from a description (`pvrs trait --describe`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pvrs.errors import InputError
from pvrs.judge.cache import ScoreCache, cache_key
from pvrs.judge.describe import (
    Counts,
    check_trait_data,
    describe_trait,
    endpoint_generator,
    local_generator,
    save_trait_file,
)
from pvrs.judge.numbers import DEFAULT_MODE, MODES
from pvrs.judge.rubrics import BUILTIN, Rubric, load_rubric


class Judge(Protocol):
    """Anything that scores prompts 0-100 in a judge mode (`pvrs.judge.numbers.MODES`), in
    order, telling `on_score(i, score)` as each is done; None is "no score" (a `REFUSAL`, or
    no answer in the mode). `id` names what decides the scores (it keys the cache)."""

    @property
    def id(self) -> str: ...

    def score(
        self, prompts: Sequence[str], on_score: Callable[[int, float | None], object] | None = None,
        mode: str = DEFAULT_MODE,
    ) -> list[float | None]: ...


@dataclass(frozen=True)
class Answer:
    """One answer to judge; `trait` fills the rubric's {trait} (a trait or a role)."""

    persona_id: str
    qid: str
    question: str
    answer: str
    trait: str | None = None


def judge_answers(
    judge: Judge,
    rubric: Rubric,
    answers: Sequence[Answer],
    cache: ScoreCache | None = None,
    on_score: Callable[[int, float | None, bool], object] | None = None,
) -> list[float | None]:
    """Scores of `answers`, in order (None: the judge gave no score). Cached scores, None
    included, are reused; new ones are cached as they arrive, so an interrupted run loses
    none. `on_score(i, score, cached)` hears each."""
    # A rubric without {trait} scores the same whatever the trait: key it without one. Other
    # modes are other scores; 0-100 keeps the keys it had before there were modes.
    judge_id = judge.id if rubric.scoring == DEFAULT_MODE else f"{judge.id}#mode={rubric.scoring}"
    keys = [cache_key(judge_id, rubric.text, (rubric.needs_trait and a.trait) or "", a.question, a.answer) for a in answers]
    scores: list[float | None] = [None if cache is None else cache.get(k) for k in keys]
    # Render before any request: a missing {trait} fails before the judge is asked anything.
    todo = [i for i, k in enumerate(keys) if cache is None or k not in cache]
    prompts = [rubric.render(answers[i].question, answers[i].answer, answers[i].trait) for i in todo]
    if on_score is not None:
        asked = set(todo)
        for i, s in enumerate(scores):
            if i not in asked:
                on_score(i, s, True)

    def scored(j: int, score: float | None) -> None:
        i = todo[j]
        scores[i] = score
        if cache is not None:
            cache.put(keys[i], score)
        if on_score is not None:
            on_score(i, score, False)

    if rubric.scoring == DEFAULT_MODE:  # a judge written before modes takes no `mode`
        judge.score(prompts, scored)
    else:
        judge.score(prompts, scored, mode=rubric.scoring)
    return scores


def read_answers(paths: Sequence[str | Path]) -> list[Answer]:
    """Answers from JSONL/JSON/parquet files of {qid, persona_id, question, answer} rows (the
    files `pvrs extract --generate` saves) or folders of such `.jsonl` files. A
    (persona_id, qid) pair may occur once: scores are keyed by it."""
    from pvrs.extraction.inputs import read_rows

    files: list[Path] = []
    for spec in paths:
        path = Path(spec)
        found = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
        if not found:
            raise InputError(f"{path}: a folder with no .jsonl answer files inside")
        files.extend(found)
    out: list[Answer] = []
    seen: dict[tuple[str, str], Path] = {}
    for file in files:
        for n, row in enumerate(read_rows(file), 1):
            missing = [k for k in ("persona_id", "qid", "question", "answer") if row.get(k) in (None, "")]
            if missing:
                raise InputError(f"{file} row {n}: missing {', '.join(missing)}; answer rows need persona_id, qid, question and answer")
            key = (str(row["persona_id"]), str(row["qid"]))
            if key in seen:
                raise InputError(f"{file} row {n}: persona {key[0]!r} question {key[1]!r} also appears in {seen[key]}; judge each answer once "
                                 "(scores have no variant: pass one variant's folder of generations, e.g. .../templated)")
            seen[key] = file
            out.append(Answer(key[0], key[1], str(row["question"]), str(row["answer"])))
    if not out:
        raise InputError(f"{', '.join(map(str, paths))}: no answers to judge; pass files of persona_id, qid, question, answer rows")
    return out


__all__ = [
    "BUILTIN", "MODES", "Answer", "Counts", "Judge", "Rubric", "ScoreCache", "check_trait_data", "describe_trait",
    "endpoint_generator", "judge_answers", "load_rubric", "local_generator", "read_answers", "save_trait_file",
]
