"""`pvrs screen`: batched projections equal each conversation run alone, the three input
formats give the same table, and user mistakes are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from pvrs.cli import main
from pvrs.steering.screen import Conversation, screen
from tiny import make_tokenizer
from tiny_models import raw_final_block, tiny_model

LONG_SYSTEM = "You are a careful pirate captain who answers every question with nautical metaphors and great patience."
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
    [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "what is the sea"},
     {"role": "assistant", "content": "a wide blue road"}, {"role": "user", "content": "and wind"},
     {"role": "assistant", "content": "the road's own breath, matey"}],
    [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "name a ship"},
     {"role": "assistant", "content": "the black pearl of the seven seas"}],
    [{"role": "user", "content": "count to three please"}, {"role": "assistant", "content": "one two three"}],
]  # fmt: skip
LAYERS = [0, 2, 3]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer("chatml")
    return tiny_model("llama", seed=0, vocab_size=len(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screen-model")
    model, tokenizer = tiny
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def direction(tiny) -> np.ndarray:
    model, _ = tiny
    return np.random.default_rng(1).standard_normal((4, model.config.hidden_size)).astype(np.float32)


def _alone(model, tokenizer, messages, direction, tokens):
    """One conversation, one forward with output_hidden_states; the assistant contents are
    found by searching the rendered text (each is unique here)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc["offset_mapping"][0]
    mask = torch.zeros(len(offsets), dtype=torch.bool)
    if tokens == "all":
        mask[:] = True
    else:
        for m in messages:
            if m["role"] == "assistant":
                start = text.index(m["content"])
                mask |= (offsets[:, 0] < start + len(m["content"])) & (offsets[:, 1] > start)
        if tokens == "last":
            last = int(mask.nonzero()[-1])
            mask[:] = False
            mask[last] = True
    with torch.no_grad(), raw_final_block(model):
        hidden = model(input_ids=enc["input_ids"], output_hidden_states=True).hidden_states
    out = []
    for layer in LAYERS:
        unit = torch.as_tensor(direction[layer]) / torch.linalg.vector_norm(torch.as_tensor(direction[layer]))
        out.append(float((hidden[layer + 1][0][mask] @ unit).mean()))
    return out, int(mask.sum())


@pytest.mark.parametrize("tokens", ["assistant", "all", "last"])
def test_batched_projections_equal_each_conversation_alone(tiny, direction, tokens):
    model, tokenizer = tiny
    conversations = [Conversation(i, f"c{i}", m) for i, m in enumerate(CONVERSATIONS)]
    # A small budget: several padded batches, and the shared system prompt reused as a prefix.
    result = screen(model, tokenizer, conversations, direction, LAYERS, tokens=tokens, batch_tokens=128)
    assert result.layers == LAYERS
    for n, messages in enumerate(CONVERSATIONS):
        expected, count = _alone(model, tokenizer, messages, direction, tokens)
        np.testing.assert_allclose(result.projections[n], expected, atol=1e-5, rtol=0)
        assert result.n_tokens[n] == count


def _write_inputs(tmp_path: Path) -> dict[str, Path]:
    from datasets import Dataset

    rows = [{"id": f"c{i}", "messages": m} for i, m in enumerate(CONVERSATIONS)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "data.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), parquet)
    folder = tmp_path / "saved"
    Dataset.from_list(rows).save_to_disk(str(folder))
    return {"jsonl": jsonl, "parquet": parquet, "datasets": folder}


def test_cli_reads_jsonl_parquet_and_saved_datasets_alike(tiny, tiny_dir, direction, tmp_path, capsys):
    model, tokenizer = tiny
    vector = tmp_path / "v.npy"
    np.save(vector, direction)
    tables = {}
    for kind, data in _write_inputs(tmp_path).items():
        out = tmp_path / f"out-{kind}"
        code = main(["screen", "--model", str(tiny_dir), "--device", "cpu", "--data", str(data), "--vector", str(vector),
                     "--layer", "0", "2-3", "--output-dir", str(out), "--batch-tokens", "64"])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert "conversations/s" in err
        tables[kind] = pq.read_table(out / "projections.parquet")
        assert pacsv.read_csv(out / "projections.csv").equals(tables[kind])
        assert (out / "histogram.html").stat().st_size > 0
    first = tables["jsonl"]
    assert first.column_names == ["index", "id", "n_tokens", "layer_0", "layer_2", "layer_3"]
    assert first.column("id").to_pylist() == ["c0", "c1", "c2", "c3"]
    assert all(t.equals(first) for t in tables.values())
    expected = [_alone(model, tokenizer, m, direction, "assistant")[0] for m in CONVERSATIONS]
    got = np.stack([first.column(f"layer_{layer}").to_numpy() for layer in LAYERS], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The dataset's means beside the rows: one line per layer.
    dataset = pacsv.read_csv(out / "dataset.csv")
    assert dataset.column_names == ["vector", "layer", "conversations", "projection"]
    assert dataset.column("layer").to_pylist() == LAYERS and set(dataset.column("conversations").to_pylist()) == {4}
    np.testing.assert_allclose(dataset.column("projection").to_numpy(), got.mean(axis=0), atol=1e-12, rtol=0)


def _one_line_error(argv: list[str], capsys) -> str:
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    # transformers' own "Loading weights" bar is not pvrs's output
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, err
    return err


def test_user_mistakes_are_one_line_before_the_model_loads(tiny_dir, direction, tmp_path, capsys, monkeypatch):
    from datasets import Dataset, DatasetDict
    from pvrs.cli import steering_run

    def no_load(*args, **kwargs):
        raise AssertionError("the model should not load")

    monkeypatch.setattr(steering_run, "load_model", no_load)
    vector = tmp_path / "v.npy"
    np.save(vector, direction)
    single = tmp_path / "one.npy"  # one direction for every layer: the model's config bounds --layer
    np.save(single, direction[0])
    good = _write_inputs(tmp_path)["jsonl"]
    no_messages = tmp_path / "bad.jsonl"
    no_messages.write_text(json.dumps({"text": "hi"}) + "\n")
    bad_role = tmp_path / "role.jsonl"
    bad_role.write_text(json.dumps({"messages": [{"role": "tool", "content": "x"}]}) + "\n")
    splits = tmp_path / "splits"
    rows = [{"messages": CONVERSATIONS[0]}]
    DatasetDict(train=Dataset.from_list(rows), test=Dataset.from_list(rows)).save_to_disk(str(splits))
    a_file = tmp_path / "file"
    a_file.write_text("")
    base = ["screen", "--model", str(tiny_dir), "--vector", str(vector)]
    cases = [
        ([*base, "--data", str(tmp_path / "missing.jsonl"), "--layer", "1"], "no such file"),
        ([*base, "--data", str(no_messages), "--layer", "1"], "row 0: no 'messages' field"),
        ([*base, "--data", str(bad_role), "--layer", "1"], "has role 'tool'"),
        ([*base, "--data", str(splits), "--layer", "1"], "pick a split with --split (train, test)"),
        ([*base, "--data", str(good), "--split", "train", "--layer", "1"], "is a file, which has no splits; drop --split"),
        ([*base, "--data", str(tmp_path), "--layer", "1"], "not a dataset saved by datasets"),
        ([*base, "--data", str(good), "--layer", "9"], "layer 9 does not exist"),
        (["screen", "--model", str(tiny_dir), "--vector", str(single), "--data", str(good), "--layer", "9"],
         "layer 9 does not exist"),
        ([*base, "--data", str(good), "--layer", "1", "--output-dir", str(a_file)], "is a file"),
    ]
    capsys.readouterr()  # the setup's save_to_disk progress bars
    for argv, message in cases:
        assert message in _one_line_error(argv, capsys)


def test_a_conversation_without_assistant_tokens_is_named(tiny_dir, direction, tmp_path, capsys):
    vector = tmp_path / "v.npy"
    np.save(vector, direction)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q-only", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    argv = ["screen", "--model", str(tiny_dir), "--device", "cpu", "--vector", str(vector), "--data", str(data),
            "--layer", "1", "--output-dir", str(tmp_path / "out")]
    err = _one_line_error(argv, capsys)
    assert "'q-only' (row 0) has no assistant content" in err and "--tokens all" in err
    assert not (tmp_path / "out" / "projections.parquet").exists()
    assert main([*argv, "--tokens", "all"]) == 0
