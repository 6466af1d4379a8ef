"""Saved answers (`--generate`) are reused by what decided them, not by where the weights sit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pvrs.engines.models import SMOLLM2
from pvrs.extraction import inputs
from pvrs.extraction.generate import SamplingConfig
from pvrs.extraction.samples import AnswerJob, SampleSource

from tests.tiny import make_tokenizer
from tests.tiny_models import tiny_model

PIRATE = inputs.Persona("pirate", "Pirate", "You are a pirate captain.", "You are a pirate captain who loves the sea.")
QA = [inputs.QAPair("q1", "What is the capital of France?", ""), inputs.QAPair("q2", "How do I bake bread?", "")]


def _answering(text: str) -> object:
    def answerer(asks: Sequence[AnswerJob], sampling: SamplingConfig, on_batch: object) -> Iterator[tuple[int, list[inputs.QAPair]]]:
        for i, ask in enumerate(asks):
            yield i, [inputs.QAPair(q.qid, q.question, text, persona_id=ask.persona.id) for q in ask.questions]

    return answerer


def test_answers_of_the_builtin_model_are_reused_after_the_cache_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The built-in model loads from its converted folder in $PVRS_CACHE_DIR (its config's
    # name_or_path); a tiny model stands in for its weights.
    model, tokenizer = tiny_model("qwen2"), make_tokenizer("qwen2.5")
    source = SampleSource(QA, generate=SamplingConfig(), generations_dir=tmp_path / "generations")
    wanted = [(PIRATE, "templated")]
    for cache, text in [("first", "generated"), ("moved", "generated again")]:
        monkeypatch.setenv("PVRS_CACHE_DIR", str(tmp_path / cache))
        model.config.name_or_path = str(SMOLLM2.cache_path())
        rows = source.answers(model, tokenizer, wanted, _answering(text), lambda n, reused: None)[0]
        assert not isinstance(rows, str)
        assert [r.answer for r in rows] == ["generated"] * len(QA)


def test_answers_of_another_model_folder_are_not_reused(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("qwen2"), make_tokenizer("qwen2.5")
    source = SampleSource(QA, generate=SamplingConfig(), generations_dir=tmp_path / "generations")
    wanted = [(PIRATE, "templated")]
    for folder, text in [("one", "by one"), ("two", "by two")]:
        model.config.name_or_path = str(tmp_path / folder)
        rows = source.answers(model, tokenizer, wanted, _answering(text), lambda n, reused: None)[0]
        assert not isinstance(rows, str)
        assert [r.answer for r in rows] == [text] * len(QA)
