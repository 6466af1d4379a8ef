"""Bands and schedules from the command line (`pvrs chat --steer V:10-14:A`, `pvrs steer`,
`pvrs eval --band`, `--band-scale`, `--schedule`) on a tiny random Llama saved to a folder:
the replies are the API's, and bad specs are one line and exit 2."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.extraction.generate import SamplingConfig, generate, prompt_messages
from pvrs.steering.interventions import band, steer

from tests.judge_server import Server, server_fixture  # noqa: F401 (the `server` fixture)
from tests.tiny import make_tokenizer
from tests.tiny_models import tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (4 blocks, hidden 64) with a chat tokenizer, and a (4, 64) vector.npy."""
    root = tmp_path_factory.mktemp("band")
    tokenizer = make_tokenizer("chatml")
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    vector = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32) * 4
    np.save(root / "vector.npy", vector)
    return root


@pytest.fixture(scope="module")
def loaded(folder: Path):
    from pvrs.engines.models import load

    return load(str(folder / "model"), device="cpu")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _chat(folder: Path, *extra: str) -> list[str]:
    return ["chat", "--model", str(folder / "model"), "--device", "cpu", "--max-new-tokens", "6", *extra]


def test_chat_steers_a_band_with_a_schedule_as_the_api_does(folder, loaded, capsys, monkeypatch):
    model, tokenizer = loaded
    vector = np.load(folder / "vector.npy")
    alphas = band(model, tokenizer, [1, 2, 3], 3.0, "norm")
    with steer(model, vector, [1, 2, 3], alpha=alphas, schedule="linear:3"):
        expected = generate(model, tokenizer, prompt_messages(tokenizer, None, "hello there"),
                            SamplingConfig(max_new_tokens=6, temperature=0.0))
    replies = []
    for spec in (f"{folder / 'vector.npy'}:1-3:3", f"{folder / 'vector.npy'}@1--1:3"):
        monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n"))
        code, out, err = _run(_chat(folder, "--steer", spec, "--band-scale", "norm", "--schedule", "linear:3"), capsys)
        assert code == 0, err
        shown = ", ".join(f"{a:g}" for a in alphas.values())
        assert f"at layers 1-3, alpha {shown}, schedule linear:3" in " ".join(err.split())  # rich wraps
        replies.append(out)
    assert replies[0] == replies[1] == f"assistant> {expected}\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steer", "{v}:3-1:2"], "--steer '3-1': the range goes backwards; write it low-high"),
        (["--steer", "{v}@2-7:2"], "--steer '2-7': layer 4 does not exist (0..3); the vector has shape (4, 64)"),
        (["--steer", "{v}@1-2:nan"], "--steer '{v}@1-2:nan': "),
        (["--steer", "{v}:1:2", "--schedule", "linear:0"], "argument --schedule: schedule 'linear:0' is not constant, "),
        (["--steer", "{v}:1:2", "--band-scale", "log"], "argument --band-scale: invalid choice: 'log'"),
    ],
)
def test_bad_chat_band_and_schedule_specs_are_one_line(folder, capsys, extra, message):
    v = str(folder / "vector.npy")
    argv = _chat(folder, *(e.format(v=v) for e in extra))
    try:
        code, _, err = _run(argv, capsys)
    except SystemExit as exc:  # argparse's own errors
        code, err = exc.code, capsys.readouterr().err.splitlines()[-1]
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message.format(v=v) in err, err


def _eval(server: Server, folder: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(folder / "model"), "--device", "cpu", "--vector", str(folder / "vector.npy"),
            "--trait", "speaks like a pirate", "--prompt", "Who are you?", "--prompt", "Name a colour.",
            "--max-new-tokens", "5", "--judge-url", server.url, "--judge-model", "m", "--no-report",
            "--output-dir", str(out), *extra]


def _cells(out: Path) -> dict[str, list[str]]:
    return {p.stem: json.loads(p.read_text())["answers"] for p in (out / "cells").glob("*.json")}


def _answers(loaded, vector: np.ndarray, layers: list[int], alphas: dict[int, float], schedule: str) -> list[str]:
    model, tokenizer = loaded
    config = SamplingConfig(max_new_tokens=5, temperature=0.0)
    with steer(model, vector, layers, alpha=alphas, schedule=schedule):
        return [generate(model, tokenizer, prompt_messages(tokenizer, None, q), config)
                for q in ("Who are you?", "Name a colour.")]


def test_eval_band_cells_sit_beside_layer_cells_with_their_own_keys(server, folder, loaded, tmp_path, capsys):
    """`--band 2 1-2` adds a cell per band and alpha beside `--layer 2`'s: its own file, row and
    key; a band of one layer answers as the layer does; a schedule or a band scale that changes a
    band's alphas runs that cell again, and nothing else changes."""
    out = tmp_path / "out"
    vector = np.load(folder / "vector.npy")
    grid = ["--layer", "2", "--band", "2", "1-2", "--alpha", "4"]
    assert main(_eval(server, folder, out, *grid)) == 0
    with (out / "results.csv").open() as f:
        rows = [(r["kind"], r["layer"], r["band"], r["alpha"], r["band_strengths"]) for r in csv.DictReader(f)]
    assert rows == [("unsteered", "", "", "", ""), ("steered", "2", "", "4", ""), ("steered", "", "2", "4", "4"),
                    ("steered", "", "1+2", "4", "4 4")]
    cells = _cells(out)
    assert sorted(cells) == ["band1+2_alpha4", "band2_alpha4", "layer2_alpha4", "unsteered"]
    assert cells["band2_alpha4"] == cells["layer2_alpha4"] != cells["unsteered"]
    assert cells["band1+2_alpha4"] == _answers(loaded, vector, [1, 2], {1: 4.0, 2: 4.0}, "constant")
    capsys.readouterr()

    assert main(_eval(server, folder, out, *grid, "--band-scale", "norm")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells_resumed"] == 3  # only band 1+2's alphas changed
    model, tokenizer = loaded
    alphas = band(model, tokenizer, [1, 2], 4.0, "norm")
    assert _cells(out)["band1+2_alpha4"] == _answers(loaded, vector, [1, 2], alphas, "constant")

    assert main(_eval(server, folder, out, *grid, "--schedule", "first:2")) == 0
    assert json.loads((out / "summary.json").read_text())["cells_resumed"] == 0  # another setting: all again
    cells = _cells(out)
    assert cells["band1+2_alpha4"] == _answers(loaded, vector, [1, 2], {1: 4.0, 2: 4.0}, "first:2")
    assert cells["band2_alpha4"] == cells["layer2_alpha4"] == _answers(loaded, vector, [2], {2: 4.0}, "first:2")


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["--band", "3-1", "--alpha", "1"], "--band '3-1': the range goes backwards; write it low-high"),
        (["--band", "2-9", "--alpha", "1"], "--band '2-9': layer 4 does not exist (0..3); the vector has shape (4, 64)"),
        (["--band", "1-2"], "--band needs --alpha: the grid is every pair of them"),
        (["--alpha", "1"], "--alpha needs --layer or --band: the grid is every pair of them"),
        (["--band", "1-2", "--alpha", "1", "--relative", "--band-scale", "norm"], "--relative already scales"),
        (["--layer", "1", "--alpha", "1", "--schedule", "first:0"], "argument --schedule: schedule 'first:0' is not "),
    ],
)
def test_bad_eval_bands_are_one_line(folder, tmp_path, capsys, grid, message):
    argv = ["eval", "--model", str(folder / "model"), "--vector", str(folder / "vector.npy"), "--trait", "x",
            "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--output-dir", str(tmp_path / "out"), *grid]
    try:
        code, _, err = _run(argv, capsys)
    except SystemExit as exc:  # argparse's own errors
        code, err = exc.code, capsys.readouterr().err.splitlines()[-1]
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_steer_sweeps_a_band_by_norm_with_a_schedule_as_the_api_does(folder, loaded, capsys):
    model, tokenizer = loaded
    vector = np.load(folder / "vector.npy")
    argv = ["steer", "--model", str(folder / "model"), "--device", "cpu", "--vector", str(folder / "vector.npy"),
            "--layer", "1-3", "--alpha", "2", "--band-scale", "norm", "--schedule", "first:2",
            "--prompt", "hello there", "--max-new-tokens", "6", "--json"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    result = json.loads(out)
    alphas = band(model, tokenizer, [1, 2, 3], 2.0, "norm")
    label = result["columns"][1]
    assert label.startswith("alpha 2 (by norm: ") and result["schedule"] == "first:2"
    assert result["alphas"][label] == {str(i): a for i, a in alphas.items()}
    with steer(model, vector, [1, 2, 3], alpha=alphas, schedule="first:2"):
        expected = generate(model, tokenizer, prompt_messages(tokenizer, None, "hello there"),
                            SamplingConfig(max_new_tokens=6, temperature=0.0))
    assert result["rows"][0]["outputs"][label] == expected != result["rows"][0]["outputs"]["unsteered"]
    code, _, err = _run([*argv, "--relative"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "pvrs steer: error: --relative already scales each layer by its residual norm; drop --band-scale norm"]


def test_chat_measures_every_band_on_the_plain_model(folder, loaded, capsys, monkeypatch):
    """A second --steer's norm band is not measured under the first one (as a calibrated cap)."""
    model, tokenizer = loaded
    v = str(folder / "vector.npy")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = _run(_chat(folder, "--steer", f"{v}:1:40", "--steer", f"{v}@1-3:2", "--band-scale", "norm"), capsys)
    assert code == 0, err
    shown = ", ".join(f"{a:g}" for a in band(model, tokenizer, [1, 2, 3], 2.0, "norm").values())
    assert f"at layers 1-3, alpha {shown}" in " ".join(err.split())


def test_bands_and_schedules_reach_the_vllm_specs(server, folder, loaded, tmp_path, monkeypatch):
    """`--engine vllm` (faked: each batch recorded) sends a band cell as one add over its layers
    with the per-layer alphas transformers adds, and the schedule; every spec passes the vLLM
    worker's checks."""
    from pvrs.engines.vllm_steering import VectorCatalog, parse_spec

    from tests.test_vllm_commands import _fake_vllm

    model, tokenizer = loaded
    catalog = VectorCatalog.of({"direction": torch.from_numpy(np.load(folder / "vector.npy"))}, 4, 64)
    batches = _fake_vllm(monkeypatch)
    argv = _eval(server, folder, tmp_path / "out", "--band", "1-3", "--alpha", "2", "--band-scale", "norm",
                 "--schedule", "first:2", "--engine", "vllm")
    assert main([a if a != "cpu" else "auto" for a in argv]) == 0  # vLLM picks its devices
    [(_, requests)] = batches
    alphas = band(model, tokenizer, [1, 2, 3], 2.0, "norm")
    add = [{"kind": "add", "vector": "direction", "layers": [1, 2, 3], "coef": list(alphas.values()),
            "positions": "all", "schedule": "first:2"}]
    assert [spec for _, _, spec in requests] == [None, None, add, add]
    assert parse_spec(add, catalog) is not None

    argv = ["steer", "--model", str(folder / "model"), "--vector", str(folder / "vector.npy"), "--layer", "1-3",
            "--alpha", "2", "--band-scale", "norm", "--schedule", "linear:4", "--prompt", "Hi?", "--engine", "vllm",
            "--json"]
    assert main(argv) == 0
    [spec] = [spec for _, _, spec in batches[1][1] if spec is not None]
    assert spec == [{**add[0], "schedule": "linear:4"}] and parse_spec(spec, catalog) is not None
