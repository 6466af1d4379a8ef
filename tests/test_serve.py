"""`pvrs serve` without vLLM: its flags, the vectors it registers, and the guard that checks
each request's steering spec before vLLM sees it (the server itself: tests/test_vllm_serve.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.cli.serve import check_host, curl_example, load_vectors
from pvrs.engines import vllm_serve
from pvrs.engines.vllm_engine import INSTALL_HINT
from pvrs.engines.vllm_serve import Served, SpecGuard, Steering, checked_body
from pvrs.engines.vllm_steering import VectorCatalog, parse_spec
from pvrs.errors import InputError, InvalidArgumentError
from pvrs.store import PersonaVectorStore

LAYERS, HIDDEN = 4, 8
CATALOG = VectorCatalog.of({"pirate": torch.ones(LAYERS, HIDDEN)}, LAYERS, HIDDEN)
STEERING = Steering(CATALOG, {"calm": [{"kind": "cap", "vector": "pirate", "layers": 2, "tau": 0.5}]})
CHAT = "/v1/chat/completions"


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_served(host: str) -> None:
    check_host(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_other_hosts_need_allow_remote(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    check_host(host, allow_remote=True)
    assert main(["serve", "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--host {host!r}" in err and "--allow-remote" in err


def test_a_vector_flag_must_be_name_equals_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--vector", "pirate.safetensors"])
    assert exit_.value.code == 2
    assert "is not NAME=FILE" in capsys.readouterr().err


def test_without_vllm_serve_says_how_to_install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    real_import = builtins.__import__

    def no_vllm(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pvrs serve: error: pvrs serve needs vLLM, which is not installed; {INSTALL_HINT}"


def test_a_good_spec_travels_as_canonical_json_with_a_cache_salt() -> None:
    body = json.loads(checked_body(CHAT, _body(vllm_xargs={"pvrs": "pirate@1-2:4", "other": 1}), STEERING))
    spec = parse_spec("pirate@1-2:4", CATALOG)
    assert spec is not None
    assert body["vllm_xargs"] == {"pvrs": spec.dumps(), "other": 1}
    assert body["cache_salt"] == spec.cache_salt
    # The same steering written as JSON (a string, or an object vLLM alone would refuse) is the same request.
    edit = {"kind": "add", "vector": "pirate", "layers": [1, 2], "coef": 4.0}
    for raw in (json.dumps([edit]), [edit], edit):
        assert json.loads(checked_body(CHAT, _body(vllm_xargs={"pvrs": raw}), STEERING))["cache_salt"] == spec.cache_salt


def test_the_request_salt_is_kept_apart_from_other_steerings() -> None:
    salted = json.loads(checked_body(CHAT, _body(cache_salt="user-1", vllm_xargs={"pvrs": "pirate@1:4"}), STEERING))
    plain = json.loads(checked_body(CHAT, _body(vllm_xargs={"pvrs": "pirate@1:4"}), STEERING))
    other = json.loads(checked_body(CHAT, _body(cache_salt="user-1", vllm_xargs={"pvrs": "pirate@1:5"}), STEERING))
    assert len({salted["cache_salt"], plain["cache_salt"], other["cache_salt"], "user-1"}) == 4


def test_requests_without_a_spec_pass_unchanged() -> None:
    for body in (_body(), _body(vllm_xargs={"x": 1}), b"not json", b"[1, 2]", b""):
        assert checked_body(CHAT, body, STEERING) == body
    assert json.loads(checked_body(CHAT, _body(vllm_xargs={"pvrs": ""}), STEERING)) == json.loads(_body(vllm_xargs={}))


@pytest.mark.parametrize(("spec", "says"), [
    ("nobody@1:4", "unknown vector 'nobody'; registered: pirate"),
    ("pirate@9:4", "out of range; this model has layers 0-3"),
    ("pirate@1:nan", "finite"),
    ('[{"kind": "add", "vector": "pirate"', "not valid JSON"),
    ([{"kind": "add", "vector": "pirate", "layers": 1, "coef": float("inf")}], "finite"),
    ("pirate", "NAME@LAYER:ALPHA"),
])
def test_bad_specs_are_one_line(spec: Any, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match="steering spec") as caught:
        checked_body(CHAT, _body(vllm_xargs={"pvrs": spec}), STEERING)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_steering_is_refused_where_no_cache_salt_keeps_it_apart() -> None:
    with pytest.raises(InvalidArgumentError, match="steering works on /v1/completions and /v1/chat/completions"):
        checked_body("/v1/responses", _body(vllm_xargs={"pvrs": "pirate@1:4"}), STEERING)


def _through_guard(body: bytes, split: bool = False) -> tuple[list[dict[str, Any]], list[bytes]]:
    """`body` POSTed through `SpecGuard` (in two pieces if `split`) to an app that reads it back."""
    seen: list[bytes] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        assert dict(scope["headers"])[b"content-length"] == str(len(message["body"])).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    pieces = [body[: len(body) // 2], body[len(body) // 2 :]] if split else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(SpecGuard(app)(scope, receive, send))
    return sent, seen


def test_the_guard_answers_a_bad_spec_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_serve, "_steering", STEERING)
    sent, seen = _through_guard(_body(vllm_xargs={"pvrs": "nobody@1:4"}))
    assert not seen
    assert sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == 400 and error["message"].startswith("steering spec: unknown vector 'nobody'")


def test_the_guard_hands_on_the_checked_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_serve, "_steering", STEERING)
    body = _body(vllm_xargs={"pvrs": "pirate@1:4"})
    sent, seen = _through_guard(body, split=True)
    assert sent[0]["status"] == 200
    assert seen == [checked_body(CHAT, body, STEERING)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama: 4 layers of 64."""
    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    folder = tmp_path_factory.mktemp("model")
    tiny_model("llama").save_pretrained(folder)
    make_tokenizer("chatml").save_pretrained(folder)
    return folder


def _store(root: Path, model: str, personas: dict[str, np.ndarray]) -> Path:
    store = PersonaVectorStore(model, root_dir=root)
    for pid, vec in personas.items():
        store.save(pid, "templated", vec, name=pid, sample_ids=["q1"])
    return root


def _args(model: str, vectors: list[str] | None = None, vector: list[tuple[str, str]] | None = None,
          capping: list[str] | None = None) -> Any:
    from argparse import Namespace

    return Namespace(model=model, vectors=vectors, vector=vector, capping=capping, variant="templated",
                     mask_strategy="answer_mean")


def test_a_store_registers_each_persona_direction_and_the_assistant_axis(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    personas = {p: rng.standard_normal((LAYERS, HIDDEN)).astype(np.float32)
                for p in ("baseline_assistant", "pirate", "poet")}
    root = _store(tmp_path / "store", str(model_dir), personas)
    np.save(tmp_path / "v.npy", personas["poet"])
    vectors, presets = load_vectors(_args(str(model_dir), [str(root)], [("mine", str(tmp_path / "v.npy"))]))
    assert presets == {}
    assert sorted(vectors) == ["assistant-axis", "mine", "pirate", "poet"]
    np.testing.assert_allclose(vectors["pirate"].numpy(), personas["pirate"] - personas["baseline_assistant"], rtol=1e-6)
    np.testing.assert_array_equal(vectors["mine"].numpy(), personas["poet"])
    with pytest.raises(InputError, match=r"'pirate' comes from both --vectors .* and --vector pirate="):
        load_vectors(_args(str(model_dir), [str(root)], [("pirate", str(tmp_path / "v.npy"))]))


def test_a_store_without_personas_is_refused_but_the_default_may_be_empty(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no personas of"):
        load_vectors(_args(str(model_dir), [str(tmp_path / "empty")]))
    assert load_vectors(_args(str(model_dir))) == ({}, {})


def test_a_capping_config_registers_its_caps_and_a_preset_of_them(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    axes = {f"axis_{i}": rng.standard_normal(HIDDEN).astype(np.float32) for i in (1, 2)}
    torch.save({"vectors": {n: {"layer": int(n[-1]), "vector": torch.from_numpy(v)} for n, v in axes.items()},
                "experiments": [{"id": "layers_1:2-p0.25", "interventions": [
                    {"vector": "axis_1", "cap": 0.5}, {"vector": "axis_2", "cap": -0.25}, {"vector": "axis_2"}]},
                    {"id": "only_2", "interventions": [{"vector": "axis_2", "cap": 1.0}]}]},
               tmp_path / "capping.pt")  # fmt: skip
    vectors, presets = load_vectors(_args(str(model_dir), capping=[f"{tmp_path / 'capping.pt'}:layers_1:2-p0.25",
                                                                   f"{tmp_path / 'capping.pt'}:only_2"]))
    assert sorted(vectors) == ["axis_1", "axis_2"]
    np.testing.assert_array_equal(vectors["axis_1"][1].numpy(), axes["axis_1"])
    assert not vectors["axis_1"][[0, 2, 3]].any()
    assert presets == {
        "layers_1:2-p0.25": [{"kind": "cap", "vector": "axis_1", "layers": 1, "tau": 0.5},
                             {"kind": "cap", "vector": "axis_2", "layers": 2, "tau": -0.25}],
        "only_2": [{"kind": "cap", "vector": "axis_2", "layers": 2, "tau": 1.0}],
    }
    with pytest.raises(InputError, match="is not an assistant-axis capping config"):
        load_vectors(_args(str(model_dir), capping=[str(tmp_path / "v.pt")]))


def test_a_preset_name_stands_for_its_spec() -> None:
    body = json.loads(checked_body(CHAT, _body(vllm_xargs={"pvrs": "calm"}), STEERING))
    spec = parse_spec(STEERING.presets["calm"], CATALOG)
    assert spec is not None and body["vllm_xargs"]["pvrs"] == spec.dumps() and body["cache_salt"] == spec.cache_salt
    with pytest.raises(InvalidArgumentError, match=r"'quiet' is neither a preset \(calm\) nor NAME@LAYER:ALPHA"):
        checked_body(CHAT, _body(vllm_xargs={"pvrs": "quiet"}), STEERING)


def test_the_curl_example_steers_a_chat_request() -> None:
    example = curl_example(Served("http://127.0.0.1:8000", "smollm2-135m", CATALOG, ("pirate",)))
    assert example.startswith("curl http://127.0.0.1:8000/v1/chat/completions ")
    body = json.loads(example.split(" -d ", 1)[1].strip("'"))
    assert body["model"] == "smollm2-135m" and body["vllm_xargs"] == {"pvrs": "pirate@2:4.0"}


@pytest.fixture
def vllm_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pvrs serve` up to the point where vLLM would start, which must not be reached."""
    from pvrs.engines import vllm_engine

    def start(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("vLLM was started")

    monkeypatch.setattr(vllm_engine, "import_vllm", lambda needs="--engine vllm": None)
    monkeypatch.setattr(vllm_serve, "serve", start)


@pytest.mark.usefixtures("vllm_stand_in")
def test_a_vector_that_does_not_fit_is_refused_before_vllm_starts(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "narrow.npy", np.ones((LAYERS, HIDDEN), np.float32))
    assert main(["serve", "--model", str(model_dir), "--vector", f"narrow={tmp_path / 'narrow.npy'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pvrs serve: error: vector 'narrow' has shape ({LAYERS}, {HIDDEN}); this model needs ({LAYERS}, 64), "
        "one row per decoder block"
    )


@pytest.mark.usefixtures("vllm_stand_in")
def test_a_model_without_a_readable_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    assert main(["serve", "--model", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pvrs serve: error: cannot load the config of model '{tmp_path / 'bad'}': ")
    assert "no_such_architecture" in err and "\n" not in err

