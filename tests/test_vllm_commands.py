"""`--engine vllm` for `pvrs steer`, `eval`, `trait` and `judge --local`.

Without vLLM (the main venv): the flags, their one-line errors, and what each command hands
vLLM (every grid cell's requests, each with its own steering spec, in one batch), with vLLM's
answerer replaced by a recorder. With vLLM (the vLLM lane, vLLM's CPU build, fp32): the
commands end to end, against their `--engine hf` runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pvrs.cli import main
from pvrs.judge.evaluation import DIRECTION, Cell, EvalSetup, cell_spec, grid, run_eval
from pvrs.judge.rubrics import load_rubric

from tests.judge_server import Server, server_fixture  # noqa: F401 (the `server` fixture)
from tests.test_eval import tiny_folder  # noqa: F401 (the `tiny_folder` fixture)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (see .ci/vllm-lane)")
TRAIT_FILE = Path(__file__).parent / "data" / "traits" / "pirate.json"


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    """One run of each command that takes --engine, on inputs that exist."""
    vector = str(tmp_path / "vector.npy")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"persona_id": "p", "qid": "q", "question": "Hi?", "answer": "Hello."}) + "\n")
    return {
        "steer": ["steer", "--vector", vector, "--layer", "1", "--alpha", "2"],
        "eval": ["eval", "--vector", vector, "--trait", "t", "--layer", "1", "--alpha", "2",
                 "--output-dir", str(tmp_path / "eval")],
        "trait": ["trait", str(TRAIT_FILE), "--no-eval", "--output-dir", str(tmp_path / "trait")],
        "judge": ["judge", str(answers), "--local", "--trait", "t", "--output", str(tmp_path / "scores.jsonl")],
    }


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed")
@pytest.mark.parametrize("command", ["steer", "eval", "trait", "judge"])
def test_engine_vllm_without_vllm_is_one_line_naming_the_install(
    command: str, tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    assert main([*_commands(tmp_path)[command], "--engine", "vllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine vllm needs vLLM" in err[0] and "pip install 'pvrs[vllm]'" in err[0]


@pytest.mark.parametrize("command", ["steer", "eval", "trait", "judge"])
def test_vllm_flags_need_the_vllm_engine_and_vllm_uses_its_own_devices(
    command: str, tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    argv = _commands(tmp_path)[command]
    assert main([*argv, "--max-model-len", "512"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pvrs {command}: error: --max-model-len sets up vLLM; add --engine vllm (or drop --max-model-len)")
    assert main([*argv, "--engine", "vllm", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine vllm with --device: vLLM uses the GPUs it sees" in err[0]


def test_judge_engine_vllm_needs_a_local_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in _commands(tmp_path)["judge"] if a != "--local"]
    assert main([*argv, "--engine", "vllm"]) == 2
    assert capsys.readouterr().err.strip().endswith("--engine vllm runs a --local judge; add --local (or drop --engine)")


def test_each_cell_is_one_spec_on_the_registered_direction() -> None:
    steered = grid([3], [2.0], {3: 10.0}, prompted=True)
    assert [cell_spec(c, "response") for c in steered] == [
        None, None,
        [{"kind": "add", "vector": DIRECTION, "layers": [3], "coef": [20.0], "positions": "response"}]]
    capped, floored = Cell("capped", cap="2+3", tau=1.5), Cell("floored", cap="1", tau=-2.0)
    assert cell_spec(capped, "all") == [{"kind": "cap", "vector": DIRECTION, "layers": [2, 3], "coef": [1.5, 1.5],
                                         "positions": "all"}]
    assert cell_spec(floored, "generated") == [{"kind": "floor", "vector": DIRECTION, "layers": [1], "coef": [-2.0],
                                                "positions": "generated"}]


class _Recorder:
    """A batch answerer: records each call's requests, answers `answer <n>`."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str | None, str, Any]]] = []

    def __call__(self, requests: Sequence[tuple[str | None, str, Any]]) -> list[str]:
        self.calls.append(list(requests))
        return [f"answer {len(self.calls)}.{i}" for i in range(len(requests))]


class _Judge:
    id = "fixed"

    def score(self, prompts: Sequence[str], on_score: Any = None, mode: str = "0-100") -> list[float]:
        for i in range(len(prompts)):
            if on_score is not None:
                on_score(i, 50.0)
        return [50.0] * len(prompts)


def test_a_batch_engine_answers_every_unsaved_cell_in_one_call_and_is_recorded(tmp_path: Path) -> None:
    from pvrs.extraction.generate import SamplingConfig

    setup = EvalSetup(["Q1?", "Q2?"], "x", load_rubric("trait"), load_rubric("coherence"),
                      SamplingConfig(max_new_tokens=3, temperature=0), system_prompt="Be x.", engine="vllm 0.0-test")
    cells = [*grid([1, 2], [4.0], None, prompted=True), Cell("capped", cap="1+2", tau=0.5)]
    batch = _Recorder()
    vector = np.ones((4, 8), np.float32)
    results = run_eval(None, None, vector, cells, setup, _Judge(), tmp_path, model_name="m", batch=batch)  # type: ignore[arg-type]
    [requests] = batch.calls
    # unsteered, prompted, layer 1, layer 2, the cap: each question under each, in order.
    assert [(system, q) for system, q, _ in requests[:4]] == [(None, "Q1?"), (None, "Q2?"), ("Be x.", "Q1?"), ("Be x.", "Q2?")]
    assert [spec for _, _, spec in requests] == [cell_spec(c, "all") for c in cells for _ in range(2)]
    assert [r.answers for r in results][2] == ["answer 1.4", "answer 1.5"]
    record = json.loads((tmp_path / "cells" / "layer1_alpha4.json").read_text())
    assert record["engine"] == "vllm 0.0-test" and record["answers"] == ["answer 1.4", "answer 1.5"]
    # A rerun asks for nothing; another engine's (or transformers') cells are not reused.
    run_eval(None, None, vector, cells, setup, _Judge(), tmp_path, model_name="m", batch=batch)  # type: ignore[arg-type]
    assert len(batch.calls) == 1
    from dataclasses import replace

    assert setup.fingerprint("m", vector, "j") != replace(setup, engine=None).fingerprint("m", vector, "j")
    assert replace(setup, engine=None).fingerprint("m", vector, "j") == replace(setup, engine=None).fingerprint("m", vector, "j")


def _fake_vllm(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, np.ndarray], list[Any]]]:
    """`--engine vllm` without vLLM: the config is built from the flags as with vLLM, and
    vLLM's answerer records each batch it is handed."""
    import pvrs.cli.steering_run as steering_run
    import pvrs.engines.vllm_engine as vllm_engine

    batches: list[tuple[dict[str, np.ndarray], list[Any]]] = []

    def answerer(config: Any, vectors: dict[str, np.ndarray], tokenizer: Any, sampling: Any, dtype: str) -> Any:
        assert dtype == "float32" and isinstance(config, vllm_engine.VllmConfig)

        def answer(requests: Sequence[Any]) -> list[str]:
            batches.append((vectors, list(requests)))
            return [f"vllm says {i}" for i in range(len(requests))]
        return answer

    monkeypatch.setattr(vllm_engine, "import_vllm", lambda: None)
    monkeypatch.setattr(vllm_engine, "version", lambda: "0.0-test")
    monkeypatch.setattr(steering_run, "vllm_answerer", answerer)
    return batches


def test_steer_on_vllm_sends_every_prompt_and_alpha_in_one_batch(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    batches = _fake_vllm(monkeypatch)
    assert main(["steer", "--model", str(tiny_folder), "--vector", str(tmp_path / "vector.npy"), "--layer", "1-2",
                 "--alpha", "2", "-3", "--prompt", "Hi?", "--prompt", "Who?", "--system", "Be brief.",
                 "--positions", "response", "--max-new-tokens", "3", "--engine", "vllm", "--json"]) == 0
    [(vectors, requests)] = batches
    assert np.array_equal(vectors["direction"], np.load(tmp_path / "vector.npy"))
    add = [[{"kind": "add", "vector": "direction", "layers": [1, 2], "coef": [a, a], "positions": "response"}] for a in (2.0, -3.0)]
    assert requests == [("Be brief.", p, spec) for p in ("Hi?", "Who?") for spec in (None, *add)]
    shown = json.loads(capsys.readouterr().out)
    assert shown["rows"][1]["outputs"] == {"unsteered": "vllm says 3", "alpha 2": "vllm says 4", "alpha -3": "vllm says 5"}


def test_steer_and_eval_take_the_response_positions(
    server: Server, tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from tests.test_eval import _eval_argv

    argv = ["steer", "--model", str(tiny_folder), "--device", "cpu", "--vector", str(tmp_path / "vector.npy"),
            "--layer", "1", "--alpha", "0", "--prompt", "Hi?", "--max-new-tokens", "3", "--json"]
    assert main([*argv, "--positions", "response"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["outputs"]["alpha 0"] == row["outputs"]["unsteered"]
    assert main([*_eval_argv(server, tmp_path), "--positions", "response"]) == 0


def test_eval_on_vllm_writes_the_files_of_eval_on_transformers(
    server: Server, tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from tests.test_eval import _eval_argv

    argv = _eval_argv(server, tmp_path)
    assert main([*argv, "--output-dir", str(tmp_path / "hf")]) == 0
    batches = _fake_vllm(monkeypatch)
    argv = [a if a != "cpu" else "auto" for a in argv]  # vLLM picks its devices
    assert main([*argv, "--output-dir", str(tmp_path / "vllm"), "--engine", "vllm"]) == 0
    [(_, requests)] = batches
    assert len(requests) == 6 * 2  # 6 cells x 2 questions, one batch
    hf, vl = tmp_path / "hf", tmp_path / "vllm"
    assert sorted(p.relative_to(hf) for p in hf.rglob("*")) == sorted(p.relative_to(vl) for p in vl.rglob("*"))
    with (hf / "results.csv").open() as a, (vl / "results.csv").open() as b:
        rows = [list(csv.DictReader(f)) for f in (a, b)]
    assert [(r["kind"], r["layer"], r["alpha"]) for r in rows[0]] == [(r["kind"], r["layer"], r["alpha"]) for r in rows[1]]
    assert json.loads((vl / "summary.json").read_text())["engine"] == "vllm 0.0-test"
    assert json.loads((hf / "summary.json").read_text())["engine"] == "transformers"
    # A rerun resumes every cell: nothing goes to vLLM.
    assert main([*argv, "--output-dir", str(vl), "--engine", "vllm"]) == 0
    assert len(batches) == 1


# ---- the vLLM lane -------------------------------------------------------------------------


def _answer(prompt: str) -> str:
    match = re.search(r"\[ANSWER START\]\n(.*)\n\[ANSWER END\]", prompt, re.S)
    assert match is not None
    return match[1]


@needs_vllm
def test_steer_on_vllm_equals_transformers_token_for_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Greedy fp32 on a tiny Qwen2: every column of `pvrs steer` equals the transformers
    hooks' reply, and the largest alpha changes the reply (so steering did something)."""
    from tests.test_vllm import _save_tiny

    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")
    rng = np.random.default_rng(0)
    vector = rng.standard_normal((4, 128)).astype(np.float32)
    np.save(tmp_path / "v.npy", vector / np.linalg.norm(vector, axis=1, keepdims=True))
    argv = ["steer", "--model", str(folder), "--dtype", "float32", "--vector", str(tmp_path / "v.npy"), "--layer", "1-2",
            "--alpha", "0", "4", "40", "--prompt", "Hi?", "--prompt", "Tell me a story.", "--system", "Be brief.",
            "--max-new-tokens", "32", "--json"]
    replies = []
    for engine in (["--device", "cpu"], ["--engine", "vllm"]):
        assert main([*argv, *engine]) == 0
        replies.append(json.loads(capsys.readouterr().out)["rows"])
    assert replies[1] == replies[0]
    assert any(row["outputs"]["alpha 40"] != row["outputs"]["unsteered"] for row in replies[0])
    assert all(row["outputs"]["alpha 0"] == row["outputs"]["unsteered"] for row in replies[0])


@needs_vllm
@pytest.mark.slow
def test_eval_on_vllm_runs_the_grid_of_transformers_and_scores_move_alike(server: Server, tmp_path: Path) -> None:
    """The built-in model steered by its output embedding of " cat" (tests/test_eval.py's
    planted direction) on both engines: the same cells and files, and a judge counting cats
    sees the trait rise with alpha on both."""
    from pvrs.engines import models

    model, tokenizer = models.load()
    [token] = tokenizer.encode(" cat", add_special_tokens=False)
    row = model.get_output_embeddings().weight[token].detach().float().numpy()
    num_layers = model.config.num_hidden_layers
    del model
    np.save(tmp_path / "cat.npy", np.tile(row / np.linalg.norm(row), (num_layers, 1)))

    def cats(prompt: str) -> float:
        if "coherence" in prompt:
            return 100.0
        words = _answer(prompt).lower().split()
        return 100.0 * sum("cat" in w for w in words) / max(len(words), 1)

    server.scorer = cats
    argv = ["eval", "--vector", str(tmp_path / "cat.npy"), "--layer", str(num_layers * 2 // 3), "--alpha", "0", "0.5", "1.5",
            "--relative", "--trait", "talks about cats", "--max-new-tokens", "24", "--judge-url", server.url,
            "--judge-model", "m", "--dtype", "float32", "--no-png"]
    traits = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        assert main([*argv, "--engine", engine, "--output-dir", str(out)]) == 0
        with (out / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        traits[engine] = [float(r["trait"]) for r in rows if r["kind"] == "steered"]
        assert [r["kind"] for r in rows] == ["unsteered", "steered", "steered", "steered"]
    hf, vl = tmp_path / "hf", tmp_path / "vllm"
    assert sorted(p.relative_to(hf) for p in hf.rglob("*")) == sorted(p.relative_to(vl) for p in vl.rglob("*"))
    for t in traits.values():
        assert t[0] < t[1] < t[2] and t[2] > 20
    summary = json.loads((vl / "summary.json").read_text())
    assert summary["engine"].startswith("vllm ") and summary["recommended"]["alpha"] == 1.5
    record = json.loads((vl / "cells" / "unsteered.json").read_text())
    assert record["engine"] == summary["engine"]
    # In fp32 the engines answer alike: the unsteered answers are the same text.
    assert record["answers"] == json.loads((hf / "cells" / "unsteered.json").read_text())["answers"]


@needs_vllm
@pytest.mark.slow
def test_trait_on_vllm_end_to_end(server: Server, tmp_path: Path) -> None:
    from tests.test_vllm import _save_tiny

    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")
    out = tmp_path / "out"
    server.scorer = lambda prompt: 100.0 if "coherence" in prompt else 50.0
    argv = ["trait", str(TRAIT_FILE), "--model", str(folder), "--dtype", "float32", "--samples", "1", "--max-new-tokens", "4",
            "--judge-url", server.url, "--judge-model", "m", "--output-dir", str(out), "--layer", "1", "--alpha", "0", "2",
            "--min-trait-pos", "0", "--max-trait-neg", "100", "--no-png", "--engine", "vllm", "--enforce-eager"]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "answers" / "vllm").glob("*.jsonl")) == ["neg_0.jsonl", "neg_1.jsonl", "pos_0.jsonl", "pos_1.jsonl"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "vllm" and "response_mean" in summary["eval"]
    cells = sorted(p.name for p in (out / "eval" / "response_mean" / "cells").glob("*.json"))
    assert cells == ["layer1_alpha0.json", "layer1_alpha2.json", "prompted.json", "unsteered.json"]
    # A rerun reuses the answers, the scores and every cell: nothing is asked again.
    asked = len(server.requests)
    assert main(argv) == 0
    assert len(server.requests) == asked


@needs_vllm
@pytest.mark.slow
def test_judge_local_on_vllm_scores_as_the_transformers_judge(tmp_path: Path) -> None:
    rows = [("q1", "What is the capital of France?", "The capital of France is Paris."),
            ("q2", "What is the capital of France?", "purple the the seven banana of"),
            ("q3", "How do I boil an egg?", "Put it in boiling water for seven minutes.")]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"persona_id": "p", "qid": q, "question": k, "answer": a}) + "\n" for q, k, a in rows))
    scores = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        extra = ["--engine", "vllm", "--enforce-eager"] if engine == "vllm" else ["--device", "cpu"]
        assert main(["judge", str(answers), "--local", "--rubric", "coherence", "--dtype", "float32", "--no-cache",
                     "--output", str(out), *extra]) == 0
        found = [json.loads(line) for line in out.read_text().splitlines()]
        scores[engine] = {r["qid"]: r["score"] for r in found}
        judges = {r["judge"] for r in found}
        assert judges == {("vllm:" if engine == "vllm" else "local:") + "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert set(scores["vllm"]) == set(scores["hf"]) == {"q1", "q2", "q3"}
    for qid, score in scores["hf"].items():
        assert scores["vllm"][qid] == pytest.approx(score, abs=0.05)
