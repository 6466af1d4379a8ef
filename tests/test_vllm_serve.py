"""`pvrs serve` over HTTP: the real server process (vLLM's CPU build, a tiny Qwen2, fp32, on a
free port of 127.0.0.1) answers steered and unsteered requests side by side, a steered request
changes only its own text, bad specs are 400s with one line and leave the server answering,
and Ctrl-C stops it with exit 130 and no process left behind.

Runs where vLLM is installed (the `.ci/vllm-lane` venv); the rest of `pvrs serve` is in
tests/test_serve.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.store import PersonaVectorStore

from tests.interrupts import takes_ctrl_c
from tests.test_vllm import _save_tiny, needs_vllm

pytestmark = [needs_vllm, pytest.mark.slow]

START_TIMEOUT = 300.0  # seconds for vLLM to start on a busy CPU
PROMPT = "The weather today is"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    url: str
    model: str
    out: Path  # its stdout and stderr (files: a pipe nobody reads would fill and stall it)
    err: Path


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = server.url
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"pvrs serve exited with {server.process.returncode}: {server.err.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail("pvrs serve did not answer in time")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    model = str(_save_tiny(tmp / "model", "qwen2", "qwen2.5"))
    rng = np.random.default_rng(0)
    store = PersonaVectorStore(model, root_dir=tmp / "store")
    for pid in ("baseline_assistant", "pirate"):
        store.save(pid, "templated", rng.standard_normal((4, 128)).astype(np.float32), name=pid, sample_ids=["q1"])
    big = rng.standard_normal((4, 128)).astype(np.float32)
    np.save(tmp / "big.npy", 60 * big / np.linalg.norm(big, axis=-1, keepdims=True))  # the residual norm is ~10
    axis = torch.from_numpy(rng.standard_normal(128).astype(np.float32))
    torch.save({"vectors": {"axis_1": {"layer": 1, "vector": axis}},
                "experiments": [{"id": "low", "interventions": [{"vector": "axis_1", "cap": -50.0}]}]}, tmp / "capping.pt")
    port = _free_port()
    args = ["--model", model, "--vectors", str(tmp / "store"), "--vector", f"big={tmp / 'big.npy'}",
            "--capping", f"{tmp / 'capping.pt'}:low",
            "--port", str(port), "--dtype", "float32", "--max-model-len", "256"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with (tmp / "out").open("wb") as out, (tmp / "err").open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "pvrs", "serve", *args], stdout=out, stderr=err,
                                   env=env, start_new_session=True, preexec_fn=takes_ctrl_c)
    running = Server(process, f"http://127.0.0.1:{port}", model, tmp / "out", tmp / "err")
    try:
        _wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _complete(url: str, model: str, spec: Any = None, prompt: str = PROMPT, **extra: Any) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0, **extra}
    if spec is not None:
        body["vllm_xargs"] = {"pvrs": spec}
    return _post(f"{url}/v1/completions", body)


def _text(answer: tuple[int, dict[str, Any]]) -> str:
    status, body = answer
    assert status == 200, body
    return str(body["choices"][0]["text"])


def test_steered_and_unsteered_requests_side_by_side(server: Server) -> None:
    url, model = server.url, server.model
    plain = _text(_complete(url, model))
    with ThreadPoolExecutor(4) as pool:  # in flight together, so vLLM batches them
        futures = [pool.submit(_complete, url, model, spec) for spec in (
            None, "big@1-2:1.0", json.dumps([{"kind": "add", "vector": "big", "layers": [1, 2], "coef": 1.0}]), None)]
        both, steered, as_json, again = (_text(f.result()) for f in futures)
    assert steered != plain
    assert as_json == steered
    assert both == again == plain
    assert _text(_complete(url, model, "low")) != plain  # the capping experiment, by name
    # a chat request steers the same way, through the model's chat template
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}
    status, plain_chat = _post(f"{url}/v1/chat/completions", chat)
    status_steered, steered_chat = _post(f"{url}/v1/chat/completions", {**chat, "vllm_xargs": {"pvrs": "big@1:1.0"}})
    assert status == status_steered == 200
    assert plain_chat["choices"][0]["message"]["content"] != steered_chat["choices"][0]["message"]["content"]


def test_steering_never_shares_cached_prompts(server: Server) -> None:
    long = "The weather today is sunny and warm, the sea is calm. " * 4  # several cache blocks

    def ask(spec: str | None = None, **extra: Any) -> tuple[str, np.ndarray]:
        status, body = _complete(server.url, server.model, spec, prompt=long, logprobs=1, **extra)
        assert status == 200, body
        return body["choices"][0]["text"], np.array(body["choices"][0]["logprobs"]["token_logprobs"])

    plain = ask()
    steered = ask("big@1:1.0")  # the plain prompt is in the cache now: reusing it would be wrong
    fresh = ask("big@1:1.0", cache_salt="anew")  # computed anew
    assert steered[0] == fresh[0] != plain[0]
    np.testing.assert_allclose(steered[1], fresh[1], atol=1e-4)
    again = ask()  # nor does the steered prompt serve a plain one
    assert again[0] == plain[0]
    np.testing.assert_allclose(again[1], plain[1], atol=1e-4)


@pytest.mark.parametrize(("spec", "says"), [
    ("nobody@1:4.0", "unknown vector 'nobody'; registered: assistant-axis, axis_1, big, pirate"),
    ("big@7:4.0", "layer(s) [7] out of range; this model has layers 0-3"),
    ("big@1:nan", "coef is nan"),
    ('[{"kind": "add", "vector": ', "not valid JSON"),
    ('[{"kind": "cap", "vector": "pirate", "layers": 1}]', "a cap edit needs \"coef\""),
])
def test_bad_specs_are_400s_and_the_server_goes_on(server: Server, spec: str, says: str) -> None:
    status, body = _complete(server.url, server.model, spec)
    assert status == 400
    message = body["error"]["message"]
    assert says in message and "\n" not in message
    assert server.process.poll() is None
    assert _text(_complete(server.url, server.model, "pirate@2:2.0"))


def test_a_port_in_use_is_one_line(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    run = subprocess.run([sys.executable, "-m", "pvrs", "serve", "--model", server.model, "--port", port],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"pvrs serve: error: --host 127.0.0.1 --port {port}: Address already in use; choose another --port"
    )


def test_ctrl_c_stops_the_server_and_its_processes(server: Server) -> None:
    import psutil

    process, url = server.process, server.url
    children = psutil.Process(process.pid).children(recursive=True)
    assert children  # vLLM's engine runs in its own process
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    out, err = server.out.read_text(), server.err.read_text()
    assert process.returncode == 130, err[-3000:]
    assert f"at {url}/v1" in out and f"curl {url}/v1/chat/completions" in out
    assert err.strip().splitlines()[-1] == "pvrs serve: server stopped"
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive


def test_startup_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pvrs serve: error: model folder '{tmp_path / 'nothing'}' does not exist; pass a local folder with "
        "config.json, a Hugging Face id (ORG/NAME) or the built-in 'smollm2-135m'"
    )
    model = str(_save_tiny(tmp_path / "model", "qwen2", "qwen2.5"))  # 512 positions
    too_long = subprocess.run([sys.executable, "-m", "pvrs", "serve", "--model", model, "--max-model-len", "100000",
                               "--port", str(_free_port())], capture_output=True, text=True, timeout=300)
    assert too_long.returncode == 2
    last = too_long.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pvrs serve: error: vLLM could not start model '{model}': ")
    assert "100000" in last
