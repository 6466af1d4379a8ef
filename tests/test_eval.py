"""`pvrs.judge.evaluation` and `pvrs eval`: the grid of layers x alphas with baselines, judged
by a real HTTP endpoint; the table, report and recommendation; resuming saved cells."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pvrs
import pytest
from pvrs.cli import main
from pvrs.judge.evaluation import Cell, CellResult, EvalSetup, grid, recommend, run_eval
from pvrs.judge.rubrics import load_rubric

from tests.judge_server import Server, expected_score, server_fixture  # noqa: F401 (the `server` fixture)
from tests.tiny import make_tokenizer
from tests.tiny_models import tiny_model


def _result(kind: str, layer: int | None, alpha: float | None, trait: float, coherence: float) -> CellResult:
    return CellResult(Cell(kind, layer, alpha, alpha), ["a"], [trait], [coherence])


def test_recommendation_is_the_best_trait_at_enough_coherence() -> None:
    results = [
        _result("unsteered", None, None, 99, 99),  # baselines are never recommended
        _result("steered", 3, 1.0, 40, 90),
        _result("steered", 3, 4.0, 80, 60),
        _result("steered", 5, 8.0, 95, 20),  # the highest trait, but incoherent
        _result("steered", 5, 2.0, 80, 70),  # ties with (3, 4.0): the smaller alpha wins
    ]
    best = recommend(results, 50)
    assert best is not None and (best.cell.layer, best.cell.alpha) == (5, 2.0)
    assert recommend(results, 95) is None
    assert [c.slug for c in grid([3], [1.0, 0.5], {3: 10.0}, prompted=True)] == [
        "unsteered", "prompted", "layer3_alpha1", "layer3_alpha0.5"]
    assert grid([3], [0.5], {3: 10.0}, prompted=False)[-1].strength == 5.0


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    tokenizer = make_tokenizer("chatml")
    folder = tmp_path / "model"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "vector.npy", rng.standard_normal((4, 64)).astype(np.float32))
    return folder


def _eval_argv(server: Server, tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(tmp_path / "model"), "--device", "cpu", "--vector", str(tmp_path / "vector.npy"),
            "--layer", "1", "2", "--alpha", "0", "4", "--trait", "speaks like a pirate", "--prompted", "You are a pirate.",
            "--prompt", "Who are you?", "--prompt", "How do I bake bread?", "--max-new-tokens", "4",
            "--judge-url", server.url, "--judge-model", "m", "--no-png", "--output-dir", str(tmp_path / "out"), *extra]


def test_eval_cli_writes_table_report_and_resumes(server: Server, tiny_folder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(_eval_argv(server, tmp_path)) == 0
    out = tmp_path / "out"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["layer"], r["alpha"]) for r in rows] == [
        ("unsteered", "", ""), ("prompted", "", ""), ("steered", "1", "0"), ("steered", "1", "4"),
        ("steered", "2", "0"), ("steered", "2", "4")]
    assert len(list((out / "cells").glob("*.json"))) == 6 and (out / "report.html").stat().st_size > 100_000
    summary = json.loads((out / "summary.json").read_text())
    usable = [r for r in rows if r["kind"] == "steered" and float(r["coherence"]) >= 50]
    if usable:
        best = max(usable, key=lambda r: (float(r["trait"]), -float(r["alpha"]), -int(r["layer"])))
        assert (summary["recommended"]["layer"], summary["recommended"]["alpha"]) == (int(best["layer"]), float(best["alpha"]))
    else:
        assert summary["recommended"] is None
    # alpha 0 answers equal the unsteered ones: the cache answers them, so fewer than
    # 6 cells x 2 questions x 2 rubrics requests.
    asked = len(server.requests)
    assert 0 < asked < 24

    # A rerun reads every cell back: no generation, no request.
    from pvrs.extraction import generate

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("a saved cell must not be generated again")

    monkeypatch.setattr(generate, "generate", refuse)
    assert main(_eval_argv(server, tmp_path)) == 0
    assert len(server.requests) == asked and json.loads((out / "summary.json").read_text())["cells_resumed"] == 6
    # Another trait is another evaluation: the cells run again.
    with pytest.raises(AssertionError, match="must not be generated again"):
        main(_eval_argv(server, tmp_path, "--trait", "speaks like a baker"))


class _FailingJudge:
    """Scores 50 until `budget` prompts are spent, then fails like an endpoint going away."""

    id = "failing"

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def score(self, prompts: Sequence[str], on_score: Callable[[int, float], object] | None = None) -> list[float]:
        if len(prompts) > self.budget:
            raise pvrs.JudgeError("judge endpoint http://x/v1/chat/completions: no reply")
        self.budget -= len(prompts)
        for i in range(len(prompts)):
            if on_score is not None:
                on_score(i, 50.0)
        return [50.0] * len(prompts)


def test_an_interrupted_eval_keeps_its_finished_cells(tmp_path: Path) -> None:
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    vector = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    from pvrs.extraction.generate import SamplingConfig

    setup = EvalSetup(["Hi?"], "x", load_rubric("trait"), load_rubric("coherence"), SamplingConfig(max_new_tokens=3, temperature=0))
    cells = grid([1], [2.0, 4.0], None, prompted=False)
    run = dict(model_name="tiny")
    with pytest.raises(pvrs.JudgeError):
        run_eval(model, tokenizer, vector, cells, setup, _FailingJudge(4), tmp_path, **run)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["layer1_alpha2.json", "unsteered.json"]
    resumed: list[bool] = []
    results = run_eval(model, tokenizer, vector, cells, setup, _FailingJudge(2), tmp_path,
                       on_cell=lambda r, saved: resumed.append(saved), **run)
    assert resumed == [True, True, False] and [r.trait for r in results] == [50.0] * 3


def _answer(prompt: str) -> str:
    match = re.search(r"\[ANSWER START\]\n(.*)\n\[ANSWER END\]", prompt, re.S)
    assert match is not None
    return match[1]


@pytest.mark.slow
def test_eval_on_the_builtin_model_shows_a_planted_direction(server: Server, tmp_path: Path) -> None:
    """The direction is the built-in model's output embedding of " cat": steering with it
    makes answers say "cat", so a judge counting cats sees the trait rise with alpha."""
    from pvrs.engines import models

    model, tokenizer = models.load()
    [token] = tokenizer.encode(" cat", add_special_tokens=False)
    row = model.get_output_embeddings().weight[token].detach().float().numpy()
    num_layers = model.config.num_hidden_layers
    np.save(tmp_path / "cat.npy", np.tile(row / np.linalg.norm(row), (num_layers, 1)))

    def cats(prompt: str) -> float:
        if "coherence" in prompt:
            return 100.0
        words = _answer(prompt).lower().split()
        return 100.0 * sum("cat" in w for w in words) / max(len(words), 1)

    server.scorer = cats
    layer = str(num_layers * 2 // 3)
    out = tmp_path / "out"
    assert main(["eval", "--vector", str(tmp_path / "cat.npy"), "--layer", layer, "--alpha", "0", "0.5", "1.5",
                 "--relative", "--trait", "talks about cats", "--max-new-tokens", "24", "--judge-url", server.url,
                 "--judge-model", "m", "--device", "cpu", "--no-png", "--output-dir", str(out)]) == 0
    with (out / "results.csv").open() as f:
        traits = [float(r["trait"]) for r in csv.DictReader(f) if r["kind"] == "steered"]
    assert traits[0] < traits[1] < traits[2] and traits[2] > 20
    assert json.loads((out / "summary.json").read_text())["recommended"]["alpha"] == 1.5


def test_eval_caps_x_taus_grid(server: Server, tiny_folder: Path, tmp_path: Path) -> None:
    """--cap/--tau run a capped cell per (set of layers, tau) beside the steered ones; an
    upper cap's recommendation is the lowest trait at enough coherence."""
    server.scorer = lambda prompt: 90.0 if "coherence" in prompt else expected_score(prompt)
    argv = _eval_argv(server, tmp_path, "--cap", "1", "2-3", "--tau", "0", "0.5")
    argv = argv[: argv.index("--layer")] + argv[argv.index("--trait"):]  # caps only
    assert main(argv) == 0
    out = tmp_path / "out"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["cap"], r["tau"]) for r in rows] == [
        ("unsteered", "", ""), ("prompted", "", ""), ("capped", "1", "0"), ("capped", "1", "0.5"),
        ("capped", "2+3", "0"), ("capped", "2+3", "0.5")]
    summary = json.loads((out / "summary.json").read_text())
    lowest = min((r for r in rows if r["kind"] == "capped"), key=lambda r: float(r["trait"]))
    assert summary["recommended"] is None
    assert (summary["recommended_cap"]["cap"], summary["recommended_cap"]["tau"]) == (lowest["cap"], float(lowest["tau"]))
    assert sorted(p.name for p in (out / "cells").glob("capped*")) == [
        "capped1_tau0.5.json", "capped1_tau0.json", "capped2+3_tau0.5.json", "capped2+3_tau0.json"]


def test_eval_cap_without_tau_is_one_line(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--model", str(tmp_path / "model"), "--vector", str(tmp_path / "vector.npy"), "--cap", "1",
            "--trait", "x", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "pvrs eval: error: --cap needs --tau: the grid is every pair of them"]
    assert main(argv[:5] + argv[7:]) == 2  # neither --layer nor --cap
    assert "nothing to evaluate" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "trait"])
def test_repeated_grid_values_make_one_cell(command: str) -> None:
    from pvrs.cli import build_parser

    args = build_parser().parse_args([command, *(["t.json"] if command == "trait" else ["--vector", "v", "--trait", "t"]),
                                      "--layer", "1", "1", "2", "--alpha", "1", "1.0", "--cap", "3", "3", "--tau", "0", "0.0"])
    assert (args.layer, args.alpha, args.cap, args.tau) == (["1", "2"], [1.0], ["3"], [0.0])


@pytest.mark.parametrize("command", ["eval", "trait"])
def test_min_coherence_is_a_score(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Out of 0-100 no cell (and, in `pvrs trait`, no pair) could pass: an error before any work."""
    with pytest.raises(SystemExit) as info:
        main([command, "--min-coherence", "500"])
    assert info.value.code == 2 and "argument --min-coherence: '500' is not a score 0-100" in capsys.readouterr().err


def test_eval_rubric_errors_name_their_flag(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--model", str(tmp_path / "model"), "--vector", str(tmp_path / "vector.npy"), "--layer", "1",
            "--alpha", "1", "--trait", "x", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
            "--output-dir", str(tmp_path / "out")]
    (tmp_path / "no_answer.txt").write_text("Rate {question} from 0 to 100.")
    for flag, value, message in [("--trait-rubric", "missing.yaml", "not a built-in rubric"),
                                 ("--coherence-rubric", str(tmp_path / "no_answer.txt"), "has no {answer} placeholder")]:
        assert main([*argv, flag, value]) == 2
        [err] = capsys.readouterr().err.strip().splitlines()
        assert err.startswith(f"pvrs eval: error: {flag} ") and message in err, err


def test_capped_cell_caps_the_projection(tmp_path: Path) -> None:
    """A capped cell's answers are generated under `cap`: a tau far below every projection
    changes them, one far above leaves them as the unsteered ones."""
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    vector = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    from pvrs.extraction.generate import SamplingConfig
    from pvrs.judge.evaluation import cap_grid

    setup = EvalSetup(["Hi?", "Why?"], "x", load_rubric("trait"), load_rubric("coherence"),
                      SamplingConfig(max_new_tokens=6, temperature=0))
    cells = grid([], [], None, prompted=False) + cap_grid([[0, 1, 2, 3]], [-1e4, 1e4], "upper")
    results = run_eval(model, tokenizer, vector, cells, setup, _FailingJudge(99), tmp_path, model_name="tiny")
    unsteered, low, high = (r.answers for r in results)
    assert high == unsteered and low != unsteered


def test_eval_means_are_over_scored_answers_and_count_the_unscored(server: Server, tiny_folder: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A coherence judge that answers REFUSAL for every answer to "Who are you?": each cell's
    coherence is the other answer's, and results.csv and summary.json count the missing ones."""
    server.scorer = lambda prompt: (None if "Who are you?" in prompt else 80.0) if "coherence" in prompt else 70.0
    argv = _eval_argv(server, tmp_path)
    argv[argv.index("--layer"):argv.index("--trait")] = ["--layer", "1", "--alpha", "4"]
    assert main(argv) == 0
    out = tmp_path / "out"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["unsteered", "prompted", "steered"]
    assert all((r["trait"], r["coherence"], r["n"], r["trait_unscored"], r["coherence_unscored"]) == ("70.00", "80.00", "2", "0", "1")
               for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unscored"] == {"trait": 0, "coherence": 3} and summary["recommended"]["coherence"] == 80.0
    assert "0 trait and 3 coherence scores missing (REFUSAL or no number)" in " ".join(capsys.readouterr().err.split())


def test_a_cell_with_no_scored_answer_has_no_mean_and_is_never_recommended(tmp_path: Path) -> None:
    from pvrs.judge.evalreport import write_table

    unscored = CellResult(Cell("steered", 3, 8.0, 8.0), ["a", "b"], [None, None], [90.0, None])
    results = [unscored, _result("steered", 3, 1.0, 40, 90)]
    best = recommend(results, 50)
    assert best is results[1] and unscored.unscored == (2, 1) and unscored.coherence == 90.0
    with write_table(results, tmp_path / "results.csv").open() as f:
        row = next(csv.DictReader(f))
    assert (row["trait"], row["coherence"], row["trait_unscored"], row["coherence_unscored"]) == ("", "90.00", "2", "1")
