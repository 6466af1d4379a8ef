"""`pvrs screen --projection-difference --engine vllm`: the model's own answers come from vLLM
(greedy, fp32) and equal transformers' greedy answers; the projection differences written
equal those computed on transformers from the same answers.

Runs where vLLM is installed (the `.ci/vllm-lane` venv, vLLM's CPU build); elsewhere skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pvrs.cli import main
from pvrs.steering.screen import Conversation, projection_difference, screen

from tests.test_screen import CONVERSATIONS, LAYERS
from tests.test_vllm import _save_tiny, needs_vllm

MAX_NEW_TOKENS = 8


@needs_vllm
def test_own_answers_from_vllm_give_the_differences_of_transformers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pvrs.engines import models

    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")
    hf_model, tokenizer = models.load(str(folder), dtype="float32", device="cpu")
    direction = np.random.default_rng(1).standard_normal((4, hf_model.config.hidden_size)).astype(np.float32)
    np.save(tmp_path / "v.npy", direction)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "messages": m}) + "\n" for i, m in enumerate(CONVERSATIONS)))
    out = tmp_path / "out"
    code = main(["screen", "--model", str(folder), "--dtype", "float32", "--data", str(data), "--vector",
                 str(tmp_path / "v.npy"), "--layer", *map(str, LAYERS), "--projection-difference", "--max-new-tokens",
                 str(MAX_NEW_TOKENS), "--engine", "vllm", "--enforce-eager", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "projections.csv").read_text().splitlines()))
    answers = [row["own_answer"] for row in rows]
    assert "…" not in answers  # every answer has tokens (an empty one would be the placeholder)

    conversations = [Conversation(i, f"c{i}", m) for i, m in enumerate(CONVERSATIONS)]
    screened = screen(hf_model, tokenizer, conversations, direction, LAYERS)
    own = projection_difference(hf_model, tokenizer, screened, direction, max_new_tokens=MAX_NEW_TOKENS)
    assert answers == own.own_answers  # greedy in fp32: the same answers as transformers
    given = projection_difference(hf_model, tokenizer, screened, direction, answers=answers)
    for n, row in enumerate(rows):
        for j, layer in enumerate(LAYERS):
            assert float(row[f"difference_{layer}"]) == pytest.approx(given.difference[n, j], abs=1e-5)
            assert float(row[f"own_{layer}"]) == pytest.approx(given.own[n, j], abs=1e-5)
    means = list(csv.DictReader((out / "dataset.csv").read_text().splitlines()))
    np.testing.assert_allclose([float(r["difference"]) for r in means], given.dataset(), atol=1e-5, rtol=0)


@needs_vllm
def test_an_engine_that_only_answers_takes_any_architecture(tmp_path: Path) -> None:
    from pvrs.engines.models import ModelSpec, skeleton
    from pvrs.engines.vllm_engine import VllmConfig, VllmEngine
    from pvrs.errors import ModelError

    spec = ModelSpec(str(_save_tiny(tmp_path / "gemma2", "gemma2", "gemma2")), dtype="float32")
    meta, tokenizer = skeleton(spec, on_gpu=False)
    VllmEngine(VllmConfig(spec), meta, tokenizer, []).close()  # answers only: nothing to capture
    with pytest.raises(ModelError, match="cannot capture the hidden states of Gemma2ForCausalLM"):
        VllmEngine(VllmConfig(spec), meta, tokenizer, [0])
