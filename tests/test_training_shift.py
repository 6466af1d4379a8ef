"""`pvrs shift`: the projections equal a computation from output_hidden_states on both models
(a full tuned model and a LoRA adapter), and bad inputs are one line, exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.training.shift import Question, activation_shift
from tiny import make_tokenizer
from tiny_models import raw_final_block, tiny_model

peft = pytest.importorskip("peft")

QUESTIONS = [
    Question("What is the sea?", "A wide blue road, matey."),
    Question("Name a ship.", "The black pearl of the seven seas."),
    Question("Count to three please", "one two three"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer("chatml")


@pytest.fixture(scope="module")
def base(tokenizer):
    return tiny_model("llama", seed=0, vocab_size=len(tokenizer))


@pytest.fixture(scope="module")
def tuned(base):
    """The base with every weight nudged: a stand-in for a full fine-tune."""
    model = tiny_model("llama", seed=0, vocab_size=base.config.vocab_size)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def lora(base, seed: int = 1):
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)  # non-zero B: a real change
    return get_peft_model(copy.deepcopy(base), config).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, base, tuned, tokenizer):
    root = tmp_path_factory.mktemp("shift")
    for name, model in (("base", base), ("tuned", tuned)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    lora(base).save_pretrained(root / "adapter")
    other = tiny_model("llama", seed=0, vocab_size=len(tokenizer))
    other.config.hidden_size = 32
    from transformers import AutoModelForCausalLM

    small = AutoModelForCausalLM.from_config(other.config)
    lora(small).save_pretrained(root / "other-adapter")
    vector = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    np.save(root / "v.npy", vector)
    np.save(root / "narrow.npy", vector[:, :32])
    with open(root / "questions.jsonl", "w") as f:
        for q in QUESTIONS:
            f.write(json.dumps({"question": q.question, "answer": q.answer}) + "\n")
    return root


def _by_hand(model, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the mean over questions of the last prompt token and of the answer mean."""
    last, answer = [], []
    for q in QUESTIONS:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q.question}], tokenize=False,
                                               add_generation_prompt=True)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(q.answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad(), raw_final_block(model.get_base_model() if hasattr(model, "get_base_model") else model):
            states = model(input_ids=torch.tensor([p + a]), output_hidden_states=True).hidden_states
        h = np.stack([s[0].double().numpy() for s in states[1:]])  # (L, T, H), block outputs
        last.append(h[:, len(p) - 1])
        answer.append(h[:, len(p):].mean(axis=1))
    return np.mean(last, axis=0), np.mean(answer, axis=0)


def _expected(base, tuned, tokenizer, vector):
    units = vector / np.linalg.norm(vector, axis=1, keepdims=True)
    out = {}
    for measure, b, t in zip(("prompt_last", "answer_mean"), _by_hand(base, tokenizer), _by_hand(tuned, tokenizer), strict=True):
        d = t - b
        proj = np.einsum("lh,lh->l", d, units)
        out[measure] = (proj, proj / np.linalg.norm(d, axis=1))
    return out


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_shift_equals_output_hidden_states(base, tuned, tokenizer, folders, kind):
    vector = np.load(folders / "v.npy")
    other = tuned if kind == "full" else lora(base)
    result = activation_shift(base, other, tokenizer, {"v": vector}, questions=QUESTIONS)
    for measure, (proj, cos) in _expected(base, other, tokenizer, vector).items():
        np.testing.assert_allclose(result.projection["v"][measure], proj, atol=1e-5)
        np.testing.assert_allclose(result.cosine["v"][measure], cos, atol=1e-5)
    assert np.abs(result.projection["v"]["answer_mean"]).max() > 1e-3  # the models do differ


def test_cli_adapter_table_csv_plot(folders, tmp_path, capsys, base, tokenizer):
    out = tmp_path / "out"
    code = main(["shift", "--base", str(folders / "base"), "--tuned", str(folders / "adapter"), str(folders / "tuned"),
                 "--vector", str(folders / "v.npy"), "--questions", str(folders / "questions.jsonl"),
                 "--layers", "1-2", "--device", "cpu", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "shift.csv").read_text().splitlines()))
    assert {r["tuned"] for r in rows} == {"adapter", "tuned"} and {r["layer"] for r in rows} == {"1", "2"}
    expected = _expected(base, lora(base), tokenizer, np.load(folders / "v.npy"))
    got = [float(r["projection"]) for r in rows if r["tuned"] == "adapter" and r["measure"] == "prompt_last"]
    np.testing.assert_allclose(got, expected["prompt_last"][0][1:3], atol=1e-5)
    assert (out / "shift.html").is_file()
    assert "shift along" in capsys.readouterr().out


def test_adapters_of_two_runs_keep_their_own_names(folders, tmp_path, capsys):
    import shutil

    for run in ("plain", "prevented"):  # pvrs finetune's layout: RUN/adapter
        shutil.copytree(folders / "adapter", tmp_path / run / "adapter")
    out = tmp_path / "out"
    code = main(["shift", "--base", str(folders / "base"), "--tuned", str(tmp_path / "plain" / "adapter"),
                 str(tmp_path / "prevented" / "adapter"), "--vector", str(folders / "v.npy"), "--questions",
                 str(folders / "questions.jsonl"), "--layers", "1", "--device", "cpu", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "shift.csv").read_text().splitlines()))
    assert [r["tuned"] for r in rows] == ["plain/adapter"] * 2 + ["prevented/adapter"] * 2


def test_cli_generates_answers_and_correlates(folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["shift", "--base", str(folders / "base"), "--tuned", str(folders / "adapter"), str(folders / "tuned"),
                 str(folders / "base"), "--vector", str(folders / "v.npy"), "--layers", "0", "--max-new-tokens", "4",
                 "--scores", "40", "70", "10", "--device", "cpu", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "correlation.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(-1 <= float(r["pearson_r"]) <= 1 for r in rows)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tuned", "{f}/other-adapter"], "does not fit the base model"),
        (["--tuned", "{f}/tuned", "--vector", "{f}/narrow.npy"], "this model needs (64,)"),
        (["--tuned", "{f}/tuned", "--layers", "4"], "--layers"),
        (["--tuned", "{f}/tuned", "--scores", "1"], "--scores: 1 scores for 1 tuned models"),
    ],
)
def test_bad_inputs_one_line(folders, tmp_path, capsys, extra, message):
    args = ["shift", "--base", str(folders / "base"), "--questions", str(folders / "questions.jsonl"),
            "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    args += [a.format(f=folders) for a in extra]
    if "--vector" not in extra:
        args += ["--vector", str(folders / "v.npy")]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and message in lines[0], lines


def test_adapter_without_peft_names_the_extra(folders, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    code = main(["shift", "--base", str(folders / "base"), "--tuned", str(folders / "adapter"), "--vector",
                 str(folders / "v.npy"), "--questions", str(folders / "questions.jsonl"), "--device", "cpu",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("needs peft: pip install 'pvrs[train]'")


def test_without_answers_each_model_answers_greedily(base, tokenizer):
    from pvrs.training.shift import mean_activations

    question = "What is the sea?"
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                        pad_token_id=tokenizer.eos_token_id)
    greedy = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    generated = mean_activations(base, tokenizer, [Question(question)], [0, 2], max_new_tokens=6)
    given = mean_activations(base, tokenizer, [Question(question, greedy)], [0, 2])
    np.testing.assert_allclose(generated.answer_mean, given.answer_mean, atol=1e-6)
