"""`pvrs preview`: the rendered prompt with each strategy's tokens, from the built-in demo
personas or explicit texts, on a tiny local tokenizer folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from pvrs.cli import main
from tiny import make_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama3")
    make_tokenizer("llama3").save_pretrained(path)
    return path


def test_preview_a_builtin_persona_with_all_strategies(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--model", str(model_dir), "--persona-id", "pirate_captain"]) == 0
    out = capsys.readouterr().out
    assert "pirate_captain" in out and "You are a pirate captain" in out
    for name in ("persona_mean", "question_last_special", "answer_mean"):
        assert name in out


def test_preview_the_baseline_skips_persona_strategies(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--model", str(model_dir), "--persona-id", "baseline_assistant"]) == 0
    out = capsys.readouterr().out
    assert "persona_* strategies skipped" in out and "answer_mean" in out
    assert main(["preview", "--model", str(model_dir), "--persona-id", "baseline_assistant", "--mask-strategy", "persona_last"]) == 2
    assert "persona_last" in capsys.readouterr().err


def test_preview_explicit_texts(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["preview", "--model", str(model_dir), "--system", "Be brief.", "--question", "Why?", "--answer", "Because."]
    assert main([*argv, "--mask-strategy", "answer_last"]) == 0
    out = capsys.readouterr().out
    assert "answer_last" in out and "Because." in out and "persona_mean" not in out
    assert main(["preview", "--model", str(model_dir), "--question", "Why?"]) == 2
    assert "--answer" in capsys.readouterr().err
