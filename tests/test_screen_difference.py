"""`pvrs screen --projection-difference`: each row's projection minus that of the model's own
greedy answer, and the prompt-last columns, equal a hand computation on a 3-row dataset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.steering.screen import Conversation, projection_difference, screen
from test_screen import CONVERSATIONS, LAYERS, _alone
from tiny import make_tokenizer
from tiny_models import raw_final_block, tiny_model

ROWS = CONVERSATIONS[:3]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer("chatml")
    return tiny_model("llama", seed=0, vocab_size=len(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def direction(tiny) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((4, tiny[0].config.hidden_size)).astype(np.float32)


def _own_answer(model, tokenizer, prompt) -> str:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() or "…"


def _prompt_last(model, tokenizer, prompt, direction):
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad(), raw_final_block(model):
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    proj, cos = [], []
    for layer in LAYERS:
        h = hidden[layer + 1][0, -1].double()
        v = torch.as_tensor(direction[layer]).double()
        proj.append(float(h @ v / v.norm()))
        cos.append(float(h @ v / (v.norm() * h.norm())))
    return proj, cos


def test_difference_equals_hand_computation(tiny, direction):
    model, tokenizer = tiny
    conversations = [Conversation(i, f"c{i}", m) for i, m in enumerate(ROWS)]
    data = screen(model, tokenizer, conversations, direction, LAYERS)
    result = projection_difference(model, tokenizer, data, direction, max_new_tokens=6)
    for n, messages in enumerate(ROWS):
        answer = _own_answer(model, tokenizer, messages[:-1])
        assert result.own_answers[n] == answer
        given, _ = _alone(model, tokenizer, messages, direction, "assistant")
        own, _ = _alone(model, tokenizer, [*messages[:-1], {"role": "assistant", "content": answer}], direction, "assistant")
        np.testing.assert_allclose(result.own[n], own, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result.difference[n], np.subtract(given, own), atol=1e-5, rtol=0)
        proj, cos = _prompt_last(model, tokenizer, messages[:-1], direction)
        np.testing.assert_allclose(result.prompt_last[n], proj, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result.prompt_last_cosine[n], cos, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.dataset(), result.difference.mean(axis=0))


@pytest.fixture(scope="module")
def files(tiny, direction, tmp_path_factory):
    root = tmp_path_factory.mktemp("difference")
    model, tokenizer = tiny
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    np.save(root / "v.npy", direction)
    (root / "data.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "messages": m}) + "\n" for i, m in enumerate(ROWS)))
    unanswered = [*ROWS[:1], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]]
    (root / "unanswered.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in unanswered))
    return root


def test_cli_writes_difference_columns(tiny, direction, files, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["screen", "--model", str(files / "model"), "--device", "cpu", "--data", str(files / "data.jsonl"),
                 "--vector", str(files / "v.npy"), "--layer", "0", "2", "3", "--projection-difference",
                 "--max-new-tokens", "6", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dataset projection difference" in err and "projection differences at layer 3" in err
    rows = list(csv.DictReader((out / "projections.csv").read_text().splitlines()))
    model, tokenizer = tiny
    data = screen(model, tokenizer, [Conversation(i, f"c{i}", m) for i, m in enumerate(ROWS)], direction, LAYERS)
    expected = projection_difference(model, tokenizer, data, direction, max_new_tokens=6)
    for n, row in enumerate(rows):
        for j, layer in enumerate(LAYERS):
            assert float(row[f"difference_{layer}"]) == pytest.approx(expected.difference[n, j], abs=1e-5)
            assert float(row[f"prompt_last_cos_{layer}"]) == pytest.approx(expected.prompt_last_cosine[n, j], abs=1e-6)
        assert row["own_answer"] == expected.own_answers[n]
    dataset = list(csv.DictReader((out / "dataset.csv").read_text().splitlines()))
    assert list(dataset[0]) == ["vector", "layer", "conversations", "projection", "own", "difference", "prompt_last",
                                "prompt_last_cos"]
    for j, row in enumerate(dataset):
        assert (row["vector"], int(row["layer"]), int(row["conversations"])) == (str(files / "v.npy"), LAYERS[j], 3)
        for name, values in [("projection", data.projections), ("own", expected.own), ("difference", expected.difference),
                             ("prompt_last", expected.prompt_last), ("prompt_last_cos", expected.prompt_last_cosine)]:
            assert float(row[name]) == pytest.approx(values[:, j].mean(), abs=1e-5), name
    assert float(dataset[-1]["difference"]) == pytest.approx(float(dataset[-1]["projection"]) - float(dataset[-1]["own"]))
    assert 'id="difference"' in (out / "histogram.html").read_text()


def test_row_without_final_answer_is_one_line_before_loading(files, tmp_path, capsys):
    code = main(["screen", "--model", str(tmp_path / "no-model"), "--data", str(files / "unanswered.jsonl"),
                 "--vector", str(files / "v.npy"), "--layer", "0", "--projection-difference",
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "(row 1): the projection difference needs the last message to be the assistant's answer" in err


def test_engine_vllm_without_projection_difference_is_one_line(files, tmp_path, capsys):
    code = main(["screen", "--model", str(tmp_path / "no-model"), "--data", str(files / "data.jsonl"),
                 "--vector", str(files / "v.npy"), "--layer", "0", "--engine", "vllm", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--engine vllm generates the model's own answers for --projection-difference; add it" in err
