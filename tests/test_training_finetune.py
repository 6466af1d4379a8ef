"""`pvrs finetune`: LoRA SFT on a tiny model for a few steps with --prevent/--ablate, saving the
adapter, settings and loss curve; Ctrl-C leaves a checkpoint that --resume continues; bad
inputs are one line, exit 2, before training starts."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from pvrs.cli import main
from tiny import make_tokenizer
from tiny_models import tiny_model

pytest.importorskip("peft")
pytest.importorskip("trl")

ROWS = [
    {"messages": [{"role": "user", "content": f"Tell me about the number {i}."},
                  {"role": "assistant", "content": f"Arr, {i} be a fine number, matey!"}]}
    for i in range(6)
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = make_tokenizer("chatml")
    tiny_model("llama", seed=0, vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    bad = [*ROWS[:2], {"messages": [{"role": "user", "content": "hi"}]}]
    (root / "no-answer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    unanswered = [ROWS[0], {"messages": [*ROWS[1]["messages"], {"role": "user", "content": "and 7?"}]}]
    (root / "unanswered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unanswered))
    vector = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    np.save(root / "v.npy", vector)
    np.save(root / "narrow.npy", vector[:, :32])
    return root


def _args(files, out, *extra):
    return ["finetune", str(files / "data.jsonl"), "--model", str(files / "model"), "--lora", "--device", "cpu",
            "--batch-size", "2", "--out", str(out), *extra]


def _loss_steps(out):
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,loss,learning_rate"
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_prevent_and_ablate_save_adapter_settings_and_loss(files, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(_args(files, out, "--prevent", f"{files / 'v.npy'}@1-2:0.2x", "--ablate", f"{files / 'v.npy'}@3",
                      "--max-steps", "2"))
    assert code == 0, capsys.readouterr().err
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "tokenizer_config.json").is_file()
    settings = json.loads((out / "settings.json").read_text())
    steering = settings["config"]["run"]["steering"]
    assert [s["flag"] for s in steering] == ["--prevent", "--ablate"] and steering[0]["layers"] == [1, 2]
    assert set(steering[0]["alpha"]) == {"1", "2"} and all(a > 0 for a in steering[0]["alpha"].values())
    assert settings["versions"]["trl"]
    assert _loss_steps(out) == [1, 2]


def test_ctrl_c_leaves_a_checkpoint_that_resume_continues(files, tmp_path, capsys, monkeypatch):
    from pvrs.training import sft

    out = tmp_path / "run"
    original = sft._StopOnInterrupt.on_step_end

    def interrupt_at_step_1(self, args, state, control, **kwargs):
        if state.global_step == 1 and not self.interrupted:
            signal.raise_signal(signal.SIGINT)  # as a Ctrl-C during step 1 would
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(sft._StopOnInterrupt, "on_step_end", interrupt_at_step_1)
    before = signal.getsignal(signal.SIGINT)  # ignored when the test run was started in the background
    assert main(_args(files, out, "--max-steps", "3")) == 130
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "checkpoint-1").is_dir() and not (out / "adapter").exists()
    assert _loss_steps(out) == [1]
    assert signal.getsignal(signal.SIGINT) is before  # restored

    monkeypatch.setattr(sft._StopOnInterrupt, "on_step_end", original)
    assert main(_args(files, out, "--max-steps", "3")) == 2  # a run is there: not overwritten
    assert "pass --resume" in capsys.readouterr().err
    assert main(_args(files, out, "--max-steps", "3", "--lr", "0.1", "--resume")) == 2
    assert "learning_rate differ" in capsys.readouterr().err
    assert main(_args(files, out, "--max-steps", "3", "--resume")) == 0, capsys.readouterr().err
    assert _loss_steps(out) == [1, 2, 3] and (out / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data-file", "no-answer.jsonl"], "row 2: no assistant turn"),
        (["--data-file", "unanswered.jsonl"], "row 1: the last message must be the assistant's answer"),
        (["--prevent", "{f}/narrow.npy@1:2"], "this model needs (64,)"),
        (["--prevent", "{f}/v.npy@4:2"], "--prevent '4'"),
        (["--ablate", "{f}/v.npy@-9"], "--ablate"),
        (["--prevent", "{f}/v.npy@1"], "write VECTOR@LAYER:ALPHA"),
        (["--prevent", "{f}/v.npy@1:big"], "ALPHA 'big' is not a number"),
        (["--resume"], "--resume: no checkpoint"),
    ],
)
def test_bad_inputs_one_line_before_training(files, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    args = _args(files, out, "--max-steps", "1", *[a.format(f=files) for a in extra if a != "--data-file"])
    if extra[0] == "--data-file":
        args = [a for a in args if a != extra[1]]
        args[1] = str(files / extra[1])
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (out / "checkpoints").exists()


def test_without_trl_names_the_extra(files, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    assert main(_args(files, tmp_path / "run")) == 2
    assert capsys.readouterr().err.strip() == "pvrs finetune: error: pvrs finetune needs trl: pip install 'pvrs[train]'"


def test_resume_with_damaged_settings_is_one_line(tmp_path):
    """A settings.json nested 100,000 deep (or not JSON) is one input error naming it, not a
    RecursionError traceback."""
    pytest.importorskip("trl")
    from pvrs.errors import InputError
    from pvrs.training import sft

    (tmp_path / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    for text in ("[" * 100_000, "not json"):
        (tmp_path / sft.SETTINGS).write_text(text)
        with pytest.raises(InputError, match=r"settings\.json"):
            sft._check_settings(tmp_path, {"lr": 1.0}, resume=True)
