"""Directions, control-vector export, drift monitoring and the steering commands, on a
tiny random Llama saved to a folder with a tiny chat tokenizer."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.errors import ArtifactError, InputError, InvalidArgumentError
from pvrs.extraction.generate import SamplingConfig, as_chat, generate
from pvrs.steering.directions import (
    assistant_axis_direction,
    direction,
    from_spec,
    load_vector,
    probe_direction,
)
from pvrs.steering.monitor import load_conversation, turn_projections
from pvrs.steering.residuals import capture
from pvrs.store import PersonaVectorStore
from pvrs.store.controlvector import read_control_vector, write_control_vector
from safetensors.numpy import save_file
from tiny import make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

NUM_LAYERS, HIDDEN = 3, 32
PERSONAS = ("baseline_assistant", "pirate_captain", "stoic_philosopher")


def _tiny_llama(tokenizer, **extra) -> LlamaForCausalLM:
    """The small random Llama every test here runs on, sized to `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = make_tokenizer("chatml")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    _tiny_llama(tokenizer, eos_token_id=tokenizer.eos_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    from pvrs.engines.models import load

    return load(str(tiny_dir), device="cpu")


@pytest.fixture
def vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {pid: rng.standard_normal((NUM_LAYERS, HIDDEN)).astype(np.float32) for pid in PERSONAS}


@pytest.fixture
def store(tiny_dir: Path, vectors: dict[str, np.ndarray]) -> PersonaVectorStore:
    store = PersonaVectorStore(str(tiny_dir))
    for pid, vec in vectors.items():
        store.save(pid, "templated", vec, name=pid, sample_ids=["q1"])
    return store


def test_direction_and_assistant_axis(store, vectors):
    np.testing.assert_allclose(
        direction(store, "pirate_captain"),
        vectors["pirate_captain"] - vectors["baseline_assistant"],
    )
    np.testing.assert_allclose(
        direction(store, "pirate_captain", against="stoic_philosopher", layer=1),
        vectors["pirate_captain"][1] - vectors["stoic_philosopher"][1],
    )
    roles = (vectors["pirate_captain"] + vectors["stoic_philosopher"]) / 2
    np.testing.assert_allclose(
        assistant_axis_direction(store), vectors["baseline_assistant"] - roles, atol=1e-6
    )
    np.testing.assert_allclose(from_spec("assistant-axis", store), assistant_axis_direction(store))
    with pytest.raises(InputError, match="neither a vector file nor a persona"):
        from_spec("nobody", store)


def test_a_multiclass_probe_names_the_row_to_pass(tmp_path):
    from pvrs.analysis.probes import ProbeArtifact, save_probe_artifact

    weight = np.eye(3, HIDDEN, dtype=np.float32)
    art = ProbeArtifact("kind", "logistic", "classification", 0, weight, np.zeros(3, np.float32), [0, 1, 2], {})
    folder = save_probe_artifact(art, tmp_path / "probe3")
    # A pvrs probe has `weight`, not scikit-learn's `coef_`: the hint must name both.
    hint = r"probe_direction\(probe\.weight\[k\]\).*probe\.coef_\[k\]"
    with pytest.raises(InvalidArgumentError, match=hint):
        probe_direction(folder)
    with pytest.raises(InvalidArgumentError, match=hint):
        probe_direction(art)
    with pytest.raises(InvalidArgumentError, match=hint):
        load_vector(folder / "weights.safetensors")
    np.testing.assert_array_equal(probe_direction(art.weight[2]), weight[2])


def test_probe_and_vector_files(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, HIDDEN))
    probe = LogisticRegression().fit(x, x[:, 0] > 0)
    np.testing.assert_allclose(probe_direction(probe), probe.coef_[0].astype(np.float32))
    np.save(tmp_path / "w.npy", probe.coef_)
    assert probe_direction(tmp_path / "w.npy").shape == (HIDDEN,)
    # A saved probe artifact folder (probe.json + weights.safetensors), two or three classes.
    from pvrs.analysis.probes import ProbeArtifact, save_probe_artifact

    def saved(weight: np.ndarray, bias: np.ndarray, classes: list, name: str):
        art = ProbeArtifact("kind", "logistic", "classification", 0, weight.astype(np.float32),
                            bias.astype(np.float32), classes, {})  # fmt: skip
        return save_probe_artifact(art, tmp_path / name)

    folder = saved(probe.coef_, probe.intercept_, [False, True], "probe")
    np.testing.assert_allclose(probe_direction(folder), probe.coef_[0], rtol=1e-6)
    multiclass = LogisticRegression().fit(x, np.digitize(x[:, 0], [-0.5, 0.5]))
    with pytest.raises(InvalidArgumentError, match="3 weight rows"):
        probe_direction(multiclass)
    folder3 = saved(multiclass.coef_, multiclass.intercept_, [0, 1, 2], "probe3")
    with pytest.raises(InvalidArgumentError, match="3 weight rows"):  # not read as 3 layers
        probe_direction(folder3)
    matrix = rng.standard_normal((NUM_LAYERS, HIDDEN)).astype(np.float32)
    save_file({"activations": matrix, "other": matrix[:1]}, str(tmp_path / "v.safetensors"))
    np.testing.assert_array_equal(load_vector(tmp_path / "v.safetensors", layer=2), matrix[2])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(ArtifactError):
        load_vector(tmp_path / "bad.safetensors")
    np.save(tmp_path / "nan.npy", np.full(HIDDEN, np.nan))
    with pytest.raises(Exception, match="NaN"):
        load_vector(tmp_path / "nan.npy")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with pytest.raises(ArtifactError, match=r"words.npy: holds <U1 values, not numbers"):
        load_vector(tmp_path / "words.npy")


def test_control_vector_gguf_round_trip_and_llama_cpp_conventions(tmp_path):
    import gguf

    matrix = np.random.default_rng(2).standard_normal((NUM_LAYERS + 2, HIDDEN)).astype(np.float32)
    path = write_control_vector(matrix, tmp_path / "cv.gguf", [1, 3], scale=2.0, model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    back = read_control_vector(path, num_layers=NUM_LAYERS + 2)
    np.testing.assert_allclose(back[[1, 3]], 2.0 * matrix[[1, 3]])
    assert not back[[0, 2, 4]].any()
    with pytest.raises(InvalidArgumentError, match="block 0"):
        write_control_vector(matrix, tmp_path / "zero.gguf", [0, 1])
    assert not (tmp_path / "zero.gguf").exists()


def test_monitor_projects_each_turns_content_tokens(tiny, tmp_path):
    model, tokenizer = tiny
    convo = [
        {"role": "user", "content": "what is the capital of france"},
        {"role": "assistant", "content": "paris"},
        {"role": "user", "content": "tell me about yourself"},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(m) for m in convo))
    assert load_conversation(tmp_path / "c.jsonl") == convo
    axis = torch.randn(HIDDEN)
    turns = turn_projections(model, tokenizer, convo, axis, [1])
    # Reference: the turn's tokens found by tokenizing the rendered prefix before it.
    text = tokenizer.apply_chat_template(convo, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[2][0]  # block 1's output
    start = text.index("paris")
    n_before = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
    n_turn = len(tokenizer("paris", add_special_tokens=False)["input_ids"])
    expected = float((hidden[n_before : n_before + n_turn] @ (axis / axis.norm())).mean())
    assert turns[1].n_tokens == n_turn
    assert turns[1].projection[1] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert [t.role for t in turns] == ["user", "assistant", "user"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_steer_command_sweeps_alphas_side_by_side(tiny_dir, tiny, store, capsys):
    model, tokenizer = tiny
    args = [
        "steer",
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--persona-id",
        "pirate_captain",
        "--layer",
        "1",
        "--alpha",
        "0",
        "40",
        "--prompt",
        "what is the capital of france",
        "--max-new-tokens",
        "6",
        "--json",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["columns"] == ["unsteered", "alpha 0", "alpha 40"]
    assert result["alphas"] == {"unsteered": None, "alpha 0": {"1": 0.0}, "alpha 40": {"1": 40.0}}
    outputs = result["rows"][0]["outputs"]
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    assert outputs["unsteered"] == generate(
        model, tokenizer, as_chat("what is the capital of france"), config
    )
    assert outputs["alpha 0"] == outputs["unsteered"]
    assert outputs["alpha 40"] != outputs["unsteered"]
    code, out, _ = run_cli([*args[:-1], "--relative"], capsys)  # rich table path
    assert code == 0 and "x norm" in out


def test_chat_reads_stdin_with_steering_and_capping(tiny, tiny_dir, store, capsys, monkeypatch):
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("what is paris\n/reset\n\ntell me about yourself\n")
    )
    code, out, err = run_cli(
        [
            "chat",
            "--model",
            str(tiny_dir),
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "--steer",
            "pirate_captain:1:3",
            "--cap",
            "assistant-axis:-1",
            "--cap-side",
            "lower",
            "--system",
            "You are a pirate.",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.count("assistant> ") == 2
    assert (
        "steer pirate_captain at layer 1" in err and "cap (lower) assistant-axis at layer 2" in err
    )
    # The floor is calibrated with no steering active (-1 is the last block, 2).
    from pvrs.extraction.generate import DEFAULT_PROMPTS
    from pvrs.steering.residuals import calibrate_tau

    model, tok = tiny
    axis = assistant_axis_direction(store)
    tau = calibrate_tau(model, tok, axis, [2], [as_chat(p) for p in DEFAULT_PROMPTS], 0.01)[2]
    assert f"tau {tau:.3f}" in err


def test_monitor_plot_works_offline(tmp_path):
    pytest.importorskip("plotly")
    from plotly.offline import get_plotlyjs
    from pvrs.steering.monitor import TurnProjection, write_plot

    turns = [TurnProjection(0, "user", "hi", 1, {0: 0.5}), TurnProjection(1, "assistant", "yo", 1, {0: 1.0})]
    html = write_plot(turns, tmp_path / "m.html", "drift").read_text(encoding="utf-8")
    assert "src=\"https://cdn.plot.ly" not in html
    assert get_plotlyjs()[:200] in html


def test_monitor_and_export_commands(tiny_dir, store, tmp_path, capsys):
    convo = tmp_path / "convo.json"
    convo.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "tell me about yourself"},
                    {"role": "assistant", "content": "you are a helpful assistant"},
                ]
            }
        )
    )
    code, out, err = run_cli(
        [
            "monitor",
            "--model",
            str(tiny_dir),
            "--device",
            "cpu",
            "--axis",
            "assistant-axis",
            "--conversation",
            str(convo),
            "--layer",
            "0",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(out)
    assert [t["role"] for t in report["turns"]] == ["user", "assistant"]
    assert set(report["turns"][0]["projection"]) == {"0", "2"}
    assert Path(report["plot"]).is_file()

    out_file = tmp_path / "pirate.gguf"
    code, out, err = run_cli(
        [
            "export",
            "--model",
            str(tiny_dir),
            "--persona-id",
            "pirate_captain",
            "--layer",
            "1-2",
            "--alpha",
            "0.5",
            "--out",
            str(out_file),
        ],
        capsys,
    )
    assert code == 0, err
    back = read_control_vector(out_file)
    expected = 0.5 * direction(store, "pirate_captain")
    np.testing.assert_allclose(back[1:], expected[1:], rtol=1e-6)
    # An exported file steers as it is, though it ends at its last direction (block 1 of 3).
    one = tmp_path / "one.gguf"
    argv = ["export", "--model", str(tiny_dir), "--persona-id", "pirate_captain", "--layer", "1",
            "--out", str(one)]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0 and read_control_vector(one).shape == (2, HIDDEN)
    argv = ["steer", "--model", str(tiny_dir), "--device", "cpu", "--vector", str(one),
            "--layer", "1", "--alpha", "1", "--prompt", "hi", "--max-new-tokens", "2"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--steer", "pirate_captain:one:2"], "VECTOR:LAYER:ALPHA"),
        (
            ["steer", "--vector", "missing.npy", "--layer", "1", "--alpha", "1"],
            "neither a vector file",
        ),
        (
            ["export", "--vector", "x.npy", "--persona-id", "p", "--layer", "1", "--out", "o.gguf"],
            "exactly one",
        ),
        (["steer", "--vector", "assistant-axis", "--layer", "x", "--alpha", "1"], "--layer"),
        (
            ["export", "--persona-id", "pirate_captain", "--layer", "7", "--out", "o.gguf"],
            "--layer '7': layer 7 does not exist",
        ),
        (
            ["export", "--vector", "assistant-axis", "--source", "x", "--layer", "1", "--out", "o"],
            "--source 'x'",
        ),
    ],
)
def test_cli_mistakes_are_one_line_errors(tiny_dir, store, argv, message, capsys):
    code, _, err = run_cli([*argv, "--model", str(tiny_dir), "--device", "cpu"], capsys)
    assert code == 2
    assert err.endswith("\n") and message in err.splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [
        ["steer", "--vector", "assistant-axis", "--layer", "1", "--alpha", "nan"],
        ["steer", "--vector", "assistant-axis", "--layer", "1", "--alpha", "1", "--temperature", "inf"],
        ["chat", "--cap", "assistant-axis:1", "--cap-quantile", "-inf"],
        ["export", "--vector", "assistant-axis", "--layer", "1", "--alpha", "NaN", "--out", "o.gguf"],
        ["push", "--model", "m", "--dry-run", "--out", "o", "--file-mb", "inf"],
        ["steer", "--vector", "assistant-axis", "--layer", "1", "--alpha", "1", "--max-new-tokens", "0"],
    ],
)
def test_non_finite_floats_and_zero_counts_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error: argument --" in capsys.readouterr().err


def test_a_chat_steer_with_a_non_finite_alpha_is_refused(tiny_dir, store, capsys):
    code, _, err = run_cli(["chat", "--model", str(tiny_dir), "--steer", "pirate_captain:1:inf"], capsys)
    assert code == 2 and "VECTOR:LAYER:ALPHA" in err


def test_a_vector_of_another_shape_is_named_by_its_shape(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.ones((7, 3), np.float32))
    argv = ["steer", "--vector", str(tmp_path / "v.npy"), "--layer", "15", "--alpha", "1"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert "layer 15 does not exist (0..6); the vector has shape (7, 3)" in err


def test_unwritable_outputs_fail_before_the_model_loads(tiny_dir, store, tmp_path, capsys, monkeypatch):
    from pvrs.cli import steering_run

    def no_load(*args, **kwargs):
        raise AssertionError("the model should not load")

    monkeypatch.setattr(steering_run, "load_model", no_load)
    a_file = tmp_path / "file"
    a_file.write_text("")
    conversation = tmp_path / "c.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    responses = tmp_path / "r.jsonl"
    responses.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    model = ["--model", str(tiny_dir)]
    for argv in [
        ["monitor", *model, "--axis", "pirate_captain", "--conversation", str(conversation), "--plot", str(a_file / "p.html")],
        ["contrast", *model, "--positive", str(responses), "--negative", str(responses), "--out", str(a_file / "v.st")],
        ["export", *model, "--persona-id", "pirate_captain", "--layer", "1", "--out", str(a_file / "v.gguf")],
    ]:  # fmt: skip
        code, _, err = run_cli(argv, capsys)
        assert code == 2, err
        assert f"{a_file}' is not a folder" in err and len(err.splitlines()) == 1, err


def test_a_full_disk_is_one_line_and_exit_1(tiny_dir, tmp_path, capsys, monkeypatch):
    import errno

    from pvrs.steering import contrast

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(contrast, "save_vector", disk_full)
    responses = tmp_path / "r.jsonl"
    responses.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    out = tmp_path / "v.safetensors"
    argv = ["contrast", "--model", str(tiny_dir), "--device", "cpu", "--positive", str(responses),
            "--negative", str(responses), "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert err.splitlines()[-1] == f"pvrs contrast: error: cannot write {out}: No space left on device"


def test_steering_commands_read_any_source(tiny_dir, vectors, tmp_path, capsys):
    # A store outside $ARTIFACTS_DIR, named by --source like `pvrs analyze` does.
    other = PersonaVectorStore(str(tiny_dir), root_dir=tmp_path / "elsewhere")
    for pid, vec in vectors.items():
        other.save(pid, "templated", 2 * vec, name=pid, sample_ids=["q1"])
    out_file = tmp_path / "axis.gguf"
    argv = ["export", "--model", str(tiny_dir), "--vector", "assistant-axis", "--layer", "-1",
            "--source", str(tmp_path / "elsewhere"), "--out", str(out_file)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    back = read_control_vector(out_file)
    np.testing.assert_allclose(back[-1], assistant_axis_direction(store=other)[-1], rtol=1e-6)
    assert not back[:-1].any()

    # A packaged (Hub-layout) dataset folder reads the same, through HFPersonaVectorStore.
    from pvrs.hub import package

    package(None, tmp_path / "pkg", root_dir=tmp_path / "elsewhere", progress=False)
    argv = ["export", "--model", str(tiny_dir), "--persona-id", "pirate_captain", "--layer", "1",
            "--source", str(tmp_path / "pkg"), "--out", str(out_file)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    np.testing.assert_allclose(read_control_vector(out_file)[1], direction(other, "pirate_captain")[1])


def _answer_mean(model, tokenizer, system, question, answer, layer):
    """Reference: block `layer`'s output averaged over the answer's tokens, located by
    tokenizing the rendered text before and through the answer."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    start = text.rindex(answer)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    lo = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
    hi = len(tokenizer(text[: start + len(answer)], add_special_tokens=False)["input_ids"])
    with torch.no_grad(), capture(model, [layer]) as captured:  # hidden_states[-1] is normed
        model(ids)
    return captured[layer][0][0, lo:hi].mean(0).numpy()


def test_contrast_is_mean_of_positive_minus_negative_answer_means(tiny, tiny_dir, tmp_path, capsys):
    from pvrs.steering.contrast import contrast_vector, load_responses

    model, tokenizer = tiny
    pos_rows = [
        {
            "question": "What is the capital of France?",
            "answer": "Arr, Paris be the port!",
            "system": "You are a pirate captain.",
        },
        {"question": "Tell me about yourself.", "answer": "I sail the sea with my crew."},
    ]
    neg_rows = [
        {"question": "What is the capital of France?", "answer": "The capital of France is Paris."}
    ]
    (tmp_path / "pos.jsonl").write_text("\n".join(json.dumps(r) for r in pos_rows))
    (tmp_path / "neg.json").write_text(json.dumps(neg_rows))
    positive, negative = (
        load_responses(tmp_path / "pos.jsonl"),
        load_responses(tmp_path / "neg.json"),
    )
    vector = contrast_vector(model, tokenizer, positive, negative)
    assert vector.shape == (NUM_LAYERS, HIDDEN)
    for layer in range(NUM_LAYERS):
        pos = np.mean(
            [
                _answer_mean(model, tokenizer, r.get("system"), r["question"], r["answer"], layer)
                for r in pos_rows
            ],
            axis=0,
        )
        neg = _answer_mean(
            model, tokenizer, None, neg_rows[0]["question"], neg_rows[0]["answer"], layer
        )
        np.testing.assert_allclose(vector[layer], pos - neg, rtol=1e-4, atol=1e-5)

    out = tmp_path / "vec" / "pirate.safetensors"
    code, stdout, err = run_cli(
        [
            "contrast",
            "--model",
            str(tiny_dir),
            "--device",
            "cpu",
            "--positive",
            str(tmp_path / "pos.jsonl"),
            "--negative",
            str(tmp_path / "neg.json"),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    np.testing.assert_allclose(load_vector(out), vector, rtol=1e-5, atol=1e-6)
    assert "pvrs steer --vector" in stdout
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    code, _, err = run_cli(
        [
            "contrast",
            "--model",
            str(tiny_dir),
            "--positive",
            str(tmp_path / "bad.jsonl"),
            "--negative",
            str(tmp_path / "neg.json"),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 2 and "row 0 needs string 'question' and 'answer'" in err


@pytest.mark.parametrize(
    "family", ["chatml", "smollm2", "qwen3", "llama3", "gemma2", "mistral", "phi3"]
)
def test_monitor_finds_every_turn_under_each_template_family(family):
    from tiny import FAMILIES

    assert family in FAMILIES
    tokenizer = make_tokenizer(family)
    torch.manual_seed(0)
    model = _tiny_llama(tokenizer)
    convo = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "Tell me about yourself."},
    ]
    turns = turn_projections(model, tokenizer, convo, torch.randn(HIDDEN), [0, 2])
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert all(t.n_tokens > 0 and np.isfinite(list(t.projection.values())).all() for t in turns)


def test_monitor_never_takes_template_text_for_a_turn():
    # SmolLM2's template injects "You are a helpful AI assistant named SmolLM, ...": a first
    # turn "You are" must be found in the user turn, not inside that default prompt.
    from pvrs.steering.monitor import _content_spans

    tokenizer = make_tokenizer("smollm2")
    convo = [{"role": "user", "content": "You are"}, {"role": "assistant", "content": " a "}]
    text = tokenizer.apply_chat_template(convo, tokenize=False)
    spans = _content_spans(tokenizer, text, convo)
    assert [text[a:b] for a, b in spans] == ["You are", "a"]
    assert spans[0][0] > text.index("SmolLM")


def test_monitor_reports_a_template_that_rejects_the_conversation():
    from pvrs.errors import TemplateError

    tokenizer = make_tokenizer("gemma2")  # raises on a system role
    model = _tiny_llama(tokenizer)
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(TemplateError, match="chat template"):
        turn_projections(model, tokenizer, convo, torch.randn(HIDDEN), [0])


def test_prompt_files_and_layer_ranges(tmp_path):
    import argparse

    from pvrs.cli.steering_run import read_prompts
    from pvrs.extraction.generate import DEFAULT_PROMPTS

    def ns(**kw):
        return argparse.Namespace(**{"prompt": None, "prompts": None, **kw})

    (tmp_path / "p.txt").write_text("first question\n\n  second question  \n")
    (tmp_path / "p.jsonl").write_text('{"question": "q1"}\n{"prompt": "q2"}\n')
    (tmp_path / "bad.jsonl").write_text('{"answer": "a"}\n')
    assert read_prompts(ns(prompts=str(tmp_path / "p.txt"))) == [
        "first question",
        "second question",
    ]
    assert read_prompts(ns(prompts=str(tmp_path / "p.jsonl"))) == ["q1", "q2"]
    assert read_prompts(ns(prompt=["hi"])) == ["hi"]
    assert read_prompts(ns()) == list(DEFAULT_PROMPTS[:3])
    with pytest.raises(InputError, match="'question' or 'prompt'"):
        read_prompts(ns(prompts=str(tmp_path / "bad.jsonl")))


# ---- other tools' published vectors (issue 18) -----------------------------------------------


def _reference_vector_folder(root: Path, persona: str, vector: np.ndarray, layer: int, alpha: float) -> Path:
    """What persona-vectors 0.8.10's `save_steering_vector` writes: the tensor
    `steering_vector` of shape (1, 1, H) and metadata.json with these keys."""
    folder = root / "artifacts" / "vectors" / persona
    folder.mkdir(parents=True)
    save_file({"steering_vector": vector.reshape(1, 1, -1)}, str(folder / "steering_vector.safetensors"))
    meta = {"suggested_alpha": alpha, "persona_id": persona, "layer": layer, "model_id": "tiny",
            "hidden_size": vector.shape[-1]}  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2))
    return folder


def _capping_config(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An assistant-axis `capping_config.pt`: named {layer, vector} entries and experiments
    of {vector, cap} interventions (one without a cap, which is skipped)."""
    vectors = {f"axis_layer_{i}": rng.standard_normal(HIDDEN).astype(np.float32) for i in (1, 2)}
    torch.save(
        {
            "vectors": {n: {"layer": int(n[-1]), "vector": torch.from_numpy(v)} for n, v in vectors.items()},
            "experiments": [
                {"id": "layers_1:2-p0.25", "interventions": [
                    {"vector": "axis_layer_1", "cap": 0.5}, {"vector": "axis_layer_2", "cap": -0.25},
                    {"vector": "axis_layer_2"}]},
                {"id": "layers_2:2-p0.5", "interventions": [{"vector": "axis_layer_2", "cap": 1.0}]},
            ],
        },
        path,
    )  # fmt: skip
    return vectors


def test_biography_minus_templated_is_a_direction_kind(store, vectors):
    with pytest.raises(InputError, match="biography and templated"):
        from_spec("biography:pirate_captain", store)
    bio = vectors["stoic_philosopher"] * 2
    store.save("pirate_captain", "biography", bio, name="pirate_captain", sample_ids=["q1"])
    expected = bio - vectors["pirate_captain"]
    np.testing.assert_allclose(direction(store, "pirate_captain", kind="biography"), expected, rtol=1e-6)
    np.testing.assert_allclose(direction(store, "pirate_captain", kind="biography", layer=2), expected[2], rtol=1e-6)
    np.testing.assert_allclose(from_spec("biography:pirate_captain", store), expected, rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="kind='nope'"):
        direction(store, "pirate_captain", kind="nope")


def test_reference_vector_folders_pt_files_and_probe_weights(tmp_path):
    from pvrs.steering.published import read_steering_vector
    from pvrs.store.vectorfiles import read_pt

    rng = np.random.default_rng(3)
    v = rng.standard_normal(HIDDEN).astype(np.float32)
    folder = _reference_vector_folder(tmp_path, "p1", v, layer=1, alpha=2.5)
    published = read_steering_vector(folder)
    np.testing.assert_array_equal(published.vector, v)
    assert (published.layer, published.alpha) == (1, 2.5)
    np.testing.assert_array_equal(load_vector(folder), v)  # the folder, or the file itself
    np.testing.assert_array_equal(from_spec(str(folder / "steering_vector.safetensors"), None), v)
    # assistant-axis's axis.pt: an (L, H) tensor, or a dict holding it.
    axis = rng.standard_normal((NUM_LAYERS, HIDDEN)).astype(np.float32)
    torch.save(torch.from_numpy(axis), tmp_path / "axis.pt")
    torch.save({"axis": torch.from_numpy(axis), "norms": torch.ones(NUM_LAYERS)}, tmp_path / "d.pt")
    np.testing.assert_array_equal(load_vector(tmp_path / "axis.pt"), axis)
    np.testing.assert_array_equal(read_pt(tmp_path / "d.pt"), axis)
    np.testing.assert_array_equal(load_vector(tmp_path / "axis.pt", layer=1), axis[1])
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactError, match="weights_only"):
        load_vector(tmp_path / "junk.pt")
    _capping_config(tmp_path / "capping_config.pt", rng)
    with pytest.raises(InputError, match="capping config"):
        load_vector(tmp_path / "capping_config.pt")
    # A probe's per-class weights are never layers: (2, H) with a bias is refused.
    save_file({"weight": axis[:2], "bias": np.zeros(2, np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(InvalidArgumentError, match=r"2 weight rows \(one per class, not layers\)"):
        load_vector(tmp_path / "w.safetensors")
    save_file({"weight": axis[:1], "bias": np.zeros(1, np.float32)}, str(tmp_path / "w1.safetensors"))
    np.testing.assert_array_equal(load_vector(tmp_path / "w1.safetensors"), axis[0])


def test_capping_configs_apply_as_published(tmp_path):
    from pvrs.steering.published import capping_experiment, split_capping_spec

    vectors = _capping_config(tmp_path / "capping_config.pt", np.random.default_rng(4))
    config = tmp_path / "capping_config.pt"
    assert split_capping_spec(f"{config}:layers_1:2-p0.25") == (config, "layers_1:2-p0.25")
    assert split_capping_spec(f"{config}:2") == (config, "2")
    caps = capping_experiment(config, "layers_1:2-p0.25")
    assert [(c.name, c.layer, c.tau) for c in caps] == [("axis_layer_1", 1, 0.5), ("axis_layer_2", 2, -0.25)]
    np.testing.assert_array_equal(caps[0].vector, vectors["axis_layer_1"])
    assert [c.tau for c in capping_experiment(config, 1)] == [1.0]
    with pytest.raises(InputError, match="holds 2 experiments; name one"):
        capping_experiment(config)
    with pytest.raises(InputError, match="no experiment 'layers_9'"):
        capping_experiment(config, "layers_9")
    torch.save(torch.zeros(HIDDEN), tmp_path / "axis.pt")
    assert split_capping_spec(f"{tmp_path / 'axis.pt'}:1") is None  # a vector, not a config


def test_chat_uses_reference_vectors_and_capping_configs_as_published(tiny_dir, store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: rich wraps long lines
    rng = np.random.default_rng(5)
    _reference_vector_folder(Path("."), "p1", rng.standard_normal(HIDDEN).astype(np.float32), 1, 2.5)
    folder = "artifacts/vectors/p1"
    _capping_config(Path("cc.pt"), rng)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    code, _, err = run_cli(
        ["chat", "--model", str(tiny_dir), "--device", "cpu", "--max-new-tokens", "2",
         "--steer", folder, "--cap", "cc.pt:layers_1:2-p0.25", "--cap-side", "lower"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert f"steer {folder} at layer 1, alpha 2.5" in err
    assert "cap (upper) cc.pt:layers_1:2-p0.25/axis_layer_1 at layer 1, tau 0.500" in err
    assert "cap (upper) cc.pt:layers_1:2-p0.25/axis_layer_2 at layer 2, tau -0.250" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    code, _, err = run_cli(["chat", "--model", str(tiny_dir), "--steer", f"{folder}:2:1.5"], capsys)
    assert code == 0 and f"steer {folder} at layer 2, alpha 1.5" in err
    Path(folder, "metadata.json").write_text("{}")
    code, _, err = run_cli(["chat", "--model", str(tiny_dir), "--steer", folder], capsys)
    assert code == 2 and "names no layer; give" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["chat", "--model", str(tiny_dir), "--cap", "cc.pt:nope"], capsys)
    assert code == 2 and "no experiment 'nope'" in err


def test_hostile_vector_files_are_one_line_refusals(tmp_path: Path) -> None:
    """Files downloaded from others: each is refused naming the file, allocating nothing
    huge, running no pickled code, and never read as silently wrong numbers."""
    import os
    import pickle
    import struct

    import gguf

    class Evil:
        def __reduce__(self):  # would create a file when unpickled
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    def gguf_file(name: str, tensor_name: str, data: np.ndarray) -> None:
        writer = gguf.GGUFWriter(str(tmp_path / name), "controlvector")
        writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576), }"
    header = header.ljust(118) + b"\n"
    (tmp_path / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "complex.npy", np.ones((2, HIDDEN), np.complex64))
    torch.save(torch.ones(2, HIDDEN, dtype=torch.int8), tmp_path / "int8.pt")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    save_file({"a": np.ones((2, 0), np.float32)}, str(tmp_path / "hollow.safetensors"))
    (tmp_path / "count.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0))
    gguf_file("far.gguf", "direction.99999999999", np.ones(HIDDEN, np.float32))
    gguf_file("flat.gguf", "direction.1", np.ones((2, HIDDEN), np.float32))
    gguf_file("int.gguf", "direction.1", np.ones(HIDDEN, np.int8))
    gguf_file("super.gguf", "direction.\u00b2", np.ones(HIDDEN, np.float32))
    expected = {
        "huge.npy": "not a readable .npy array",
        "empty.npy": "not a readable .npy array",
        "complex.npy": "holds complex64 values, not real floats",
        "int8.pt": "holds int8 values, not real floats",
        "evil.pt": r"cannot load with torch.load\(weights_only=True\)",
        "hollow.safetensors": r"this file holds \(2, 0\)",
        "count.gguf": "not a readable GGUF file",
        "far.gguf": "direction.99999999999 is past any model's blocks",
        "flat.gguf": "a direction is one 1-D F32 row",
        "int.gguf": "I8 of shape",
        "super.gguf": "unexpected tensor",
    }
    for name, message in expected.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would be a second line on stderr
            with pytest.raises(ArtifactError, match=message) as caught:
                load_vector(tmp_path / name)
        assert name in str(caught.value) and "\n" not in str(caught.value)
        assert "weights_only` set to `False" not in str(caught.value)  # never advised
    assert not (tmp_path / "pwned").exists()
    from safetensors.torch import save_file as save_torch

    save_torch({"direction": torch.ones(2, HIDDEN, dtype=torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    np.testing.assert_array_equal(load_vector(tmp_path / "bf16.safetensors"), np.ones((2, HIDDEN), np.float32))


def test_export_never_replaces_a_file_that_is_not_a_control_vector(tmp_path: Path) -> None:
    """`--out` naming the input vector, notes or a model GGUF would destroy it; an earlier
    control vector is replaced as before."""
    import gguf

    vector = np.ones((3, HIDDEN), np.float32)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    model = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(model), "llama")
    writer.add_tensor("token_embd.weight", np.ones((2, HIDDEN), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    kept = model.read_bytes()
    for path in (notes, model):
        with pytest.raises(InputError, match="exists and is not a control vector"):
            write_control_vector(vector, path, [1])
    assert notes.read_text() == "mine" and model.read_bytes() == kept
    earlier = write_control_vector(vector, tmp_path / "cv.gguf", [1])
    write_control_vector(2 * vector, earlier, [2])
    np.testing.assert_array_equal(read_control_vector(earlier)[2], 2 * vector[2])


def test_a_capping_config_with_nan_caps_or_vectors_is_refused(tmp_path: Path) -> None:
    from pvrs.errors import NonFiniteError
    from pvrs.steering.published import capping_experiment

    for name, tau, vector in (("tau", float("nan"), torch.ones(HIDDEN)), ("axis", 1.0, torch.full((HIDDEN,), float("inf")))):
        torch.save(
            {"vectors": {"v": {"layer": 1, "vector": vector}},
             "experiments": [{"id": "e", "interventions": [{"vector": "v", "cap": tau}]}]},
            tmp_path / f"{name}.pt",
        )  # fmt: skip
        with pytest.raises(NonFiniteError, match=rf"{name}\.pt: experiment 'e': cap\(s\) v hold NaN or Inf"):
            capping_experiment(tmp_path / f"{name}.pt")
