"""Hostile command lines: every numeric flag is bounded by argparse (one line naming the
flag, exit 2), and the checks that need no model run before one loads."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pvrs.cli import main

from tests.interrupts import takes_ctrl_c
from tests.judge_server import Server, server_fixture  # noqa: F401 (the `server` fixture)


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a command line argparse refuses with exit 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["extract", "--threads", "100000"], "argument --threads: '100000' must be at most"),
        (["extract", "--threads", "0"], "argument --threads: '0' must be at least 1"),
        (["steer", "--alpha", "1e38"], "argument --alpha: '1e38' is not in [-1e+06, 1e+06]"),
        (["export", "--alpha=-1e9"], "argument --alpha: '-1e9' is not in [-1e+06, 1e+06]"),
        (["eval", "--alpha", "1", "1e30"], "argument --alpha: '1e30' is not in [-1e+06, 1e+06]"),
        (["eval", "--tau", "1e30"], "argument --tau: '1e30' is not in [-1e+06, 1e+06]"),
        (["steer", "--seed", "1e23"], "argument --seed: '1e23' is not a whole number"),
        (["steer", "--seed", str(10**23)], f"argument --seed: '{10**23}' must be at most 4294967295"),
        (["extract", "--seed", "-1"], "argument --seed: '-1' must be at least 0"),
        (["push", "--row-group-mb", "1e300"], "argument --row-group-mb: '1e300' is not in (0, 1e+06]"),
        (["push", "--file-mb", "0"], "argument --file-mb: '0' is not in (0, 1e+06]"),
        (["preview", "-n", "-1"], "argument -n: '-1' must be at least 1"),
        (["extract", "--n-train", "0"], "argument --n-train: '0' must be at least 1"),
        (["extract", "--sample-size", "-3"], "argument --sample-size: '-3' must be at least 1"),
        (["extract", "--max-new-tokens", str(2**40)], f"argument --max-new-tokens: '{2**40}' must be at most 2147483647"),
        (["extract", "--gpu-memory-utilization", "2"], "argument --gpu-memory-utilization: '2' is not in (0, 1]"),
        (["import", "--num-layers", "-1"], "argument --num-layers: '-1' must be at least 1"),
        (["steer", "--temperature", "-1"], "argument --temperature: '-1' is not in [0, 100]"),
        (["chat", "--top-p", "5"], "argument --top-p: '5' is not in (0, 1]"),
        (["steer", "--top-p", "0"], "argument --top-p: '0' is not in (0, 1]"),
        (["chat", "--cap-quantile", "1.5"], "argument --cap-quantile: '1.5' is not in [0, 1]"),
        (["judge", "--timeout", "1e300"], "argument --timeout: '1e300' is not in (0, 86400]"),
        (["judge", "--retries", "-1"], "argument --retries: '-1' must be at least 0"),
        (["analyze", "--folds", "1"], "argument --folds: '1' must be at least 2"),
        (["analyze", "--neighbours", "0"], "argument --neighbours: '0' must be at least 1"),
        (["analyze", "--focus-layer", "-2"], "argument --focus-layer: '-2' must be at least 0"),
        (["shift", "--scores", "1", "1e300"], "argument --scores: '1e300' is not in [-1e+06, 1e+06]"),
    ],
)
def test_numeric_flags_are_bounded(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(argv, capsys)
    assert line.startswith(f"pvrs {argv[0]}: error: {expected}")


def _answers(path: Path, *answers: str) -> Path:
    path.write_text("".join(json.dumps({"persona_id": "p", "qid": f"q{i}", "question": "Q?", "answer": a}) + "\n"
                            for i, a in enumerate(answers)))
    return path


@pytest.mark.parametrize(
    "url,why",
    [("http://[::1", "is not a URL"), ("ftp://host/v1", "is not an http:// or https:// URL with a host"),
     ("localhost:8000/v1", "is not an http:// or https:// URL with a host"), ("http:///v1", "is not an http:// or https:// URL with a host")],
)
def test_a_malformed_judge_url_is_one_line(url: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["judge", str(_answers(tmp_path / "a.jsonl", "A.")), "-o", str(tmp_path / "s.jsonl"),
            "--cache", str(tmp_path / "cache.jsonl"), "--judge-url", url, "--judge-model", "m", "--trait", "t"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: --judge-url {url!r} {why}" in err


def test_ctrl_c_on_judge_exits_130_at_once_keeping_the_cache(server: Server, tmp_path: Path) -> None:
    """Two answers are scored, a third hangs on the server; Ctrl-C then ends the run at
    once (not after --timeout 120) and the two scores stay in the cache."""
    release = threading.Event()

    def scorer(prompt: str) -> float:
        if "slow" in prompt:
            release.wait(120)
        return 50.0

    server.scorer = scorer
    cache = tmp_path / "cache.jsonl"
    argv = ["judge", str(_answers(tmp_path / "a.jsonl", "fast one", "fast two", "slow")), "-o", str(tmp_path / "s.jsonl"),
            "--cache", str(cache), "--judge-url", server.url, "--judge-model", "m", "--trait", "t", "--timeout", "120"]
    proc = subprocess.Popen([sys.executable, "-m", "pvrs", *argv], stderr=subprocess.PIPE, text=True,
                            preexec_fn=takes_ctrl_c)
    try:
        deadline = time.monotonic() + 120  # generous: the subprocess imports pvrs on a loaded machine
        while not (len(server.requests) == 3 and cache.is_file() and len(cache.read_text().splitlines()) == 2):
            assert time.monotonic() < deadline and proc.poll() is None, "the judge run did not reach the slow answer"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        release.set()
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert len(cache.read_text().splitlines()) == 2 and not (tmp_path / "s.jsonl").exists()


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_export_on_a_full_disk_is_a_failed_write_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gguf

    vector = tmp_path / "v.npy"
    np.save(vector, np.ones((3, 4), np.float32))
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _disk_full)
    out = tmp_path / "cv.gguf"
    argv = ["export", "--vector", str(vector), "--layer", "1", "--model", "org/m", "--model-hint", "llama", "--out", str(out)]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"pvrs export: error: cannot write {out}: No space left on device"]
    assert not out.exists()


@pytest.mark.parametrize("wording", ["External: No space left on device (os error 28)", "No space left on device (os error 28)"])
def test_push_on_a_full_disk_is_a_failed_write_naming_the_file(
    wording: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Rust packager's errors (a parquet writer's `External: ...`, a flush's io error)
    read as pvrs's failed-write line: the file, the OS reason, exit 1."""
    from pvrs import _core
    from pvrs.errors import PackagingError, PvrsIOError
    from pvrs.store import PersonaVectorStore

    PersonaVectorStore("org/m", root_dir=tmp_path / "store").save(
        "pirate", "templated", np.ones((2, 3), np.float32), name="Pirate", sample_ids=["q1"])
    failing = tmp_path / "out" / "org__m__answer_mean" / "templated-00000-of-00001.parquet"
    error = PackagingError if wording.startswith("External") else PvrsIOError

    def disk_full(*args: object) -> None:
        raise error(f"{failing}: {wording}")

    monkeypatch.setattr(_core, "package_store", disk_full)
    argv = ["push", "--model", "org/m", "--source", str(tmp_path / "store"), "--dry-run", "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"pvrs push: error: cannot write {failing}: No space left on device"]
    # An error that names no file of the package stays what it was.
    def refused(*args: object) -> None:
        raise error(f"{tmp_path / 'store'}: Permission denied (os error 13)")

    monkeypatch.setattr(_core, "package_store", refused)
    assert main(argv) == 2


def test_import_on_a_full_disk_names_the_folder_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from pvrs.store import PersonaVectorStore

    torch.save(torch.ones(2, 3), tmp_path / "pirate.pt")
    monkeypatch.setattr(PersonaVectorStore, "save_many", _disk_full)
    root = tmp_path / "store"
    argv = ["import", str(tmp_path / "pirate.pt"), "--model", "org/m", "--num-layers", "2", "--output-dir", str(root)]
    assert main(argv) == 1
    folder = PersonaVectorStore("org/m", root_dir=root).variant_dir("templated")
    assert capsys.readouterr().err.splitlines() == [f"pvrs import: error: cannot write {folder}: No space left on device"]


def _extract_with(personas: list[dict[str, object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`pvrs extract --personas FILE` on a model that does not exist: a persona file it
    refuses fails before any model is looked up."""
    path = tmp_path / "personas.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in personas))
    assert main(["extract", "--personas", str(path), "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_an_empty_personas_file_is_refused_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _extract_with([], tmp_path, capsys) == f"pvrs extract: error: {tmp_path / 'personas.jsonl'} holds no personas; give rows of id, name, templated, biography"


@pytest.mark.parametrize("value", [["x"], {"text": "x"}, 7])
def test_a_prompt_field_that_is_not_text_is_refused(value: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _extract_with([{"id": "pirate", "templated": value}], tmp_path, capsys)
    assert f"persona 'pirate' field 'templated' is a {type(value).__name__}, not text" in line


@pytest.mark.parametrize("persona_id", [".", " ", " pirate", "pirate ", "a\u202eb", "\u200bpirate", "pirate\ufeff"])
def test_persona_ids_that_are_no_safe_file_names_are_refused(persona_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"persona id {persona_id!r}" in _extract_with([{"id": persona_id, "templated": "x"}], tmp_path, capsys)


def test_a_garbage_pt_is_not_called_a_pickle_that_could_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02\xe1" + bytes(range(256)))  # a pickle header, then noise
    (tmp_path / "text.pt").write_bytes(b"hello, not a torch file")
    for name in ("garbage.pt", "text.pt"):
        argv = ["import", str(tmp_path / name), "--model", "org/m", "--num-layers", "2", "--output-dir", str(tmp_path / "o")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "it is not a readable torch file" in err and "run code" not in err and "weights_only` set to `False" not in err


def test_export_of_a_dangling_symlink_says_it_is_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "v.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    (tmp_path / "store").mkdir()
    argv = ["export", "--vector", str(link), "--layer", "1", "--model", "org/m", "--model-hint", "llama",
            "--source", str(tmp_path / "store"), "--out", str(tmp_path / "cv.gguf")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{str(link)!r} is a symbolic link to {str(tmp_path / 'gone.safetensors')!r}, which is no file; refused" in err
    assert "neither a vector file" not in err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import make_tokenizer

    tokenizer = make_tokenizer("chatml")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("alpha,warned", [("1e5", True), ("0.01", False)])
def test_steer_warns_when_alpha_swamps_the_residual_stream(
    alpha: str, warned: bool, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vector = tmp_path / "v.npy"
    np.save(vector, np.ones((3, 32), np.float32))
    argv = ["steer", "--model", str(tiny_dir), "--device", "cpu", "--vector", str(vector), "--layer", "1",
            "--alpha", "1", alpha, "--prompt", "hi", "--max-new-tokens", "2", "--json"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    swamped = [str(w.message) for w in caught if "typical residual norm" in str(w.message)]
    assert len(swamped) == int(warned)
    if warned:
        assert swamped[0].startswith("alpha 100000 at layer 1 adds ") and "over 100x" in swamped[0]


@pytest.mark.parametrize("flag,value", [("--steer", "pirate:1:1e38"), ("--cap", "assistant-axis:1:-1e30")])
def test_chat_intervention_values_are_bounded_as_the_flags_are(flag: str, value: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", flag, value, "--model", str(tmp_path / "no-model")]) == 2
    number = value.rsplit(":", 1)[1]
    assert f"error: {flag} {value!r}: {number!r} is not in [-1e+06, 1e+06]; give VECTOR:LAYER" in capsys.readouterr().err
