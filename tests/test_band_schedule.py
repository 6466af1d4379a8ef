"""Bands (several layers steered together, per-layer alphas) and schedules over generation
steps, against a hand-written computation on a tiny random Llama: the blocks run one by one
with the edit written out, no hooks."""

from __future__ import annotations

import pvrs
import pytest
import torch
from pvrs.engines.schedule import Schedule
from pvrs.engines.transformers import cache_kwarg
from pvrs.errors import InvalidArgumentError
from pvrs.steering.interventions import band, steer
from pvrs.steering.residuals import residual_norms
from tiny_models import manual_logits
from transformers import LlamaConfig, LlamaForCausalLM

NUM_LAYERS, HIDDEN, VOCAB = 4, 64, 97


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def _tokens(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _vector(seed: int, scale: float = 1.0, shape: tuple[int, ...] = (HIDDEN,)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def factor(schedule: str, g: int) -> float:
    """The contract's factors, written out."""
    kind, _, n = schedule.partition(":")
    if kind == "linear":
        return max(0.0, 1.0 - g / int(n))
    if kind == "first":
        return 1.0 if g < int(n) else 0.0
    return 1.0


def scheduled_edit(alphas: dict[int, float], v: torch.Tensor, schedule: str, prompt_len: int, length: int):
    """`h + alpha_i * factor(g) * v` at layer i, token p at step g = max(0, p - (P - 1))."""
    factors = torch.tensor([factor(schedule, max(0, p - (prompt_len - 1))) for p in range(length)])

    def edit(h: torch.Tensor, i: int) -> torch.Tensor:
        if i not in alphas:
            return h
        row = v[i] if v.ndim == 2 else v
        return h + factors.view(1, -1, 1) * (alphas[i] * row)

    return edit


@torch.no_grad()
@pytest.mark.parametrize("scale", ["uniform", "norm"])
def test_band_equals_per_layer_alphas_added_by_hand(model, scale):
    ids = _tokens((2, 9), 1)
    stack = _vector(2, shape=(NUM_LAYERS, HIDDEN))  # a per-layer stack: row i at block i
    inputs = [_tokens((1, 7), 3)[0], _tokens((1, 5), 4)[0]]
    alphas = band(model, None, [1, 2, 3], 2.0, scale, inputs=inputs)
    if scale == "uniform":
        assert alphas == {1: 2.0, 2: 2.0, 3: 2.0}
    else:
        norms = residual_norms(model, None, inputs, [1, 2, 3])
        mean = sum(norms.values()) / 3
        assert alphas == pytest.approx({i: 2.0 * norms[i] / mean for i in (1, 2, 3)})
        assert sum(alphas.values()) / 3 == pytest.approx(2.0) and len(set(alphas.values())) == 3
    expected = manual_logits(model, ids, scheduled_edit(alphas, stack, "constant", 9, 9))
    with steer(model, stack, [1, 2, 3], alpha=alphas):
        torch.testing.assert_close(model(ids).logits, expected)


@torch.no_grad()
@pytest.mark.parametrize("scale", ["uniform", "norm"])
def test_a_band_of_one_layer_is_plain_steering_exactly(model, scale):
    ids = _tokens((2, 9), 5)
    v = _vector(6, 3.0)
    alphas = band(model, None, [2], 1.7, scale, inputs=[ids[0]])
    assert alphas == {2: 1.7}
    with steer(model, v, [2], alpha=alphas):
        banded = model(ids).logits
    with steer(model, v, 2, alpha=1.7):
        assert torch.equal(banded, model(ids).logits)


@torch.no_grad()
@pytest.mark.parametrize("schedule", ["constant", "linear:3", "first:2"])
def test_schedule_scales_each_token_by_its_generation_step(model, schedule):
    """A prefill of the 5-token prompt, then 4 more tokens in one cached forward (steps 1-4):
    the logits of both are the hand-written edit's on the whole sequence."""
    seq = _tokens((1, 9), 7)
    v = _vector(8, 2.0)
    alphas = {1: 1.5, 3: -0.5}
    expected = manual_logits(model, seq, scheduled_edit(alphas, v, schedule, 5, 9))
    with steer(model, v, [1, 3], alpha=alphas, schedule=schedule):
        first = model(seq[:, :5], use_cache=True)
        rest = model(seq[:, 5:], use_cache=True, **{cache_kwarg(model): first.past_key_values})
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], dim=1), expected)


def _greedy(model, prompt: torch.Tensor, use_cache: bool, steps: int = 8, **kwargs) -> torch.Tensor:
    # An explicit mask: a prompt token equal to pad_token_id would otherwise be masked out.
    with steer(model, **kwargs):
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                              do_sample=False, use_cache=use_cache, pad_token_id=0)


def _after_prompt(edit, prompt_len: int):
    """`edit` on the generated tokens only (positions="generated")."""

    def edited(h: torch.Tensor, i: int) -> torch.Tensor:
        return torch.cat([h[:, :prompt_len], edit(h, i)[:, prompt_len:]], dim=1)

    return edited


@torch.no_grad()
@pytest.mark.parametrize("schedule", ["linear:4", "first:3"])
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_scheduled_generation_is_the_hand_written_one_with_and_without_kv_cache(model, schedule, positions):
    prompt = _tokens((1, 6), 9)
    v = _vector(10, 4.0)
    kwargs = {"vector": v, "layers": [1, 2], "alpha": 1.0, "positions": positions, "schedule": schedule}
    cached = _greedy(model, prompt, True, **kwargs)
    assert torch.equal(cached, _greedy(model, prompt, False, **kwargs))
    # By hand: every step re-runs the whole sequence with the edit written out.
    seq = prompt
    for _ in range(8):
        edit = scheduled_edit({1: 1.0, 2: 1.0}, v, schedule, 6, seq.shape[1])
        if positions == "generated":
            edit = _after_prompt(edit, 6)
        seq = torch.cat([seq, manual_logits(model, seq, edit)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, seq)
    constant = _greedy(model, prompt, True, **{**kwargs, "schedule": "constant"})
    assert not torch.equal(cached, constant)  # the schedule did something


@pytest.mark.parametrize("text", ["linear:0", "first:-1", "linear", "cosine:3", "first:2.5", "constant:3", ""])
def test_a_bad_schedule_is_one_line(model, text):
    pattern = r"^schedule .* is not constant, linear:N or first:N"
    with pytest.raises(InvalidArgumentError, match=pattern) as info, steer(model, _vector(0), 1, schedule=text):
        pass
    assert "\n" not in str(info.value)


def test_schedule_parses_and_prints_back():
    for text in ("constant", "linear:32", "first:1"):
        assert str(Schedule.parse(text)) == text
    assert Schedule.parse(None).constant and Schedule.parse(" first:4 ") == Schedule("first", 4)


def test_bad_band_arguments(model):
    with pytest.raises(InvalidArgumentError, match=r"^band scale 'log' is not one of uniform, norm"):
        band(model, None, [1, 2], 1.0, "log")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"out of range"):
        band(model, None, [3, 4], 1.0)
    assert pvrs.band is band
