"""Preventative steering: the hook edits training forwards only (never eval or generate), the
Trainer callback adds it for `train()` and removes it after, and an adapter saved from a
steered run loads to the same forward with nothing left of the hook."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pvrs.engines.hooks import decoder_layers
from pvrs.steering.residuals import capture
from pvrs.training.prevent import PreventativeSteering, PreventativeSteeringCallback, preventative
from tiny_models import tiny_model

IDS = torch.tensor([[5, 17, 42, 99, 3, 8, 250, 11]])


@pytest.fixture
def model():
    return tiny_model("llama", seed=0)


@pytest.fixture
def vector():
    return torch.from_numpy(np.random.default_rng(2).standard_normal(64).astype(np.float32))


def _logits(model, **kwargs):
    return model(input_ids=IDS, **kwargs).logits.detach()


def test_steers_training_forwards_only(model, vector):
    plain = _logits(model)
    with preventative(model, PreventativeSteering(vector, [1, 2], alpha=4.0)):
        model.train()
        assert not torch.allclose(_logits(model), plain, atol=1e-3)  # training forward: steered
        with torch.no_grad():
            assert torch.allclose(_logits(model), plain, atol=1e-6)  # no gradients: not training
        model.eval()
        assert torch.allclose(_logits(model), plain, atol=1e-6)  # eval mode
        model.train()  # generate in train mode still runs without gradients
        generated = model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False)
    model.eval()
    assert torch.equal(generated, model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False))
    model.train()
    assert torch.allclose(_logits(model), plain, atol=1e-6)  # gone after the block
    assert all(not block._forward_hooks for block in decoder_layers(model))


def test_ablation_zeroes_the_projection_in_training(model, vector):
    model.train()
    with preventative(model, PreventativeSteering(vector, 1, ablate=True)), capture(model, [1]) as seen:
        model(input_ids=IDS)
    assert float((seen[1][0] @ (vector / vector.norm())).abs().max()) < 1e-4


def test_saved_adapter_has_no_hook(model, vector, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear"))
    optimiser = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    with preventative(wrapped, PreventativeSteering(vector, 2, alpha=3.0)):  # found through the peft wrapper
        wrapped.train()
        for _ in range(2):
            wrapped(input_ids=IDS, labels=IDS).loss.backward()
            optimiser.step()
            optimiser.zero_grad()
        wrapped.save_pretrained(tmp_path / "adapter")
        steered_eval = _logits(wrapped.eval())
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "adapter").eval()
    assert torch.allclose(_logits(loaded), steered_eval, atol=1e-6)
    assert not torch.allclose(_logits(loaded), _logits(model), atol=1e-4)  # training did change it


def _trainer(model, callbacks, tmp_path):
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": IDS[0], "labels": IDS[0]}] * 4
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                             report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-3, seed=0)
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)


def test_callback_steers_train_and_leaves(model, vector, tmp_path):
    plain = _trainer(copy.deepcopy(model), [], tmp_path / "a")
    plain.train()
    callback = PreventativeSteeringCallback(PreventativeSteering(vector, [0, 1], alpha=8.0))
    steered = _trainer(copy.deepcopy(model), [callback], tmp_path / "b")
    steered.train()
    first = [next(e["loss"] for e in t.state.log_history if "loss" in e) for t in (plain, steered)]
    assert first[0] != pytest.approx(first[1], rel=1e-3)  # the first step's loss saw the steering
    assert all(not block._forward_hooks for block in decoder_layers(steered.model))
