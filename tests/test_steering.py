"""Interventions on tiny random Llama models: exactness against a manual forward,
ablation/capping invariants, hook clean-up, KV-cache equivalence and stacking."""

from __future__ import annotations

import pvrs
import pytest
import torch
from pvrs.errors import InvalidArgumentError, NonFiniteError
from pvrs.steering.interventions import ablate, cap, steer, suggested_alpha
from pvrs.steering.residuals import calibrate_tau, capture, residual_norms
from tiny_models import ARCHS, manual_logits, tiny_model
from tiny_models import VOCAB as VOCAB_TINY
from transformers import LlamaConfig, LlamaForCausalLM

NUM_LAYERS, HIDDEN, VOCAB = 4, 64, 97


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def test_manual_forward_matches_model(model, ids):
    torch.testing.assert_close(manual_logits(model, ids, lambda h, _: h), model(ids).logits)


@torch.no_grad()
@pytest.mark.parametrize("layers", [[1], [0, 2], [3]])
def test_steer_equals_adding_alpha_v_at_the_layer_output(model, ids, layers):
    v = torch.randn(HIDDEN)
    alpha = 2.5
    expected = manual_logits(model, ids, lambda h, i: h + alpha * v if i in layers else h)
    with steer(model, v, layers=layers, alpha=alpha):
        got = model(ids).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, model(ids).logits)


@torch.no_grad()
def test_steer_per_layer_matrix_uses_row_i_at_block_i(model, ids):
    vectors = torch.randn(NUM_LAYERS, HIDDEN)
    expected = manual_logits(model, ids, lambda h, i: h + 0.5 * vectors[i] if i in (1, 3) else h)
    with steer(model, vectors.numpy(), layers=[1, -1], alpha=0.5):
        torch.testing.assert_close(model(ids).logits, expected)


@torch.no_grad()
def test_ablation_leaves_no_component_along_v(model, ids):
    v = torch.randn(HIDDEN) * 3
    v_hat = v / v.norm()
    with ablate(model, v, layers=[0, 2]), capture(model, [0, 1, 2]) as captured:
        model(ids)
    for layer in (0, 2):
        assert captured[layer][0].matmul(v_hat).abs().max() < 1e-4
    assert captured[1][0].matmul(v_hat).abs().max() > 1e-2  # layer 1 was not ablated


@torch.no_grad()
def test_cap_bounds_projections_and_leaves_lower_tokens_alone(model, ids):
    axis = torch.randn(HIDDEN)
    a_hat = axis / axis.norm()
    with capture(model, [2]) as before:
        model(ids)
    proj_before = before[2][0] @ a_hat
    tau = float(proj_before.median())
    with cap(model, axis, layers=[2], tau=tau) as used, capture(model, [2]) as after:
        model(ids)
    assert used == {2: tau}
    h_before, h_after = before[2][0], after[2][0]
    assert (h_after @ a_hat).max() <= tau + 1e-4
    below = proj_before <= tau
    assert below.any() and (~below).any()
    torch.testing.assert_close(h_after[below], h_before[below])
    # Only the axis component changes for tokens above tau.
    diff = h_after[~below] - h_before[~below]
    residual = diff - (diff @ a_hat).unsqueeze(-1) * a_hat
    assert residual.abs().max() < 1e-4


@torch.no_grad()
def test_cap_lower_side_is_a_floor(model, ids):
    axis = torch.randn(HIDDEN)
    a_hat = axis / axis.norm()
    with cap(model, axis, layers=[1], tau=0.0, side="lower"), capture(model, [1]) as after:
        model(ids)
    assert (after[1][0] @ a_hat).min() >= -1e-4


@torch.no_grad()
def test_calibrated_tau_is_the_quantile_of_projections(model, ids):
    axis = torch.randn(HIDDEN)
    inputs = [ids[0], ids[1].tolist()]
    taus = calibrate_tau(model, None, axis, [1, 3], inputs, quantile=0.9)
    with capture(model, [1, 3]) as captured:
        for item in inputs:
            model(torch.as_tensor(item).view(1, -1))
    for layer in (1, 3):
        proj = torch.cat([t[0] for t in captured[layer]]) @ (axis / axis.norm())
        assert taus[layer] == pytest.approx(float(torch.quantile(proj.double(), 0.9)), rel=1e-5)
    with cap(model, axis, layers=[1, 3], calibration=inputs, quantile=0.9) as used:
        assert used == taus


def test_hooks_are_removed_after_the_block_and_after_an_exception(model, ids):
    baseline = hook_count(model)
    v = torch.randn(HIDDEN)
    with steer(model, v, layers=[0, 1], positions="generated"), ablate(model, v, layers=[2]):
        assert hook_count(model) > baseline
    assert hook_count(model) == baseline
    with pytest.raises(RuntimeError, match="boom"), cap(model, v, layers=[3], tau=0.0):
        raise RuntimeError("boom")
    assert hook_count(model) == baseline
    # A failure inside the forward (bad input) also leaves nothing behind.
    with pytest.raises((IndexError, RuntimeError)), steer(model, v, layers=[1], positions="prompt"):
        model(torch.full((1, 3), VOCAB + 5))
    assert hook_count(model) == baseline


@torch.no_grad()
def test_stacked_interventions_compose_in_entry_order(model, ids):
    v, w = torch.randn(HIDDEN), torch.randn(HIDDEN)
    w_hat = w / w.norm()

    def edit(h, i):
        if i == 1:
            h = h + 2.0 * v
            h = h - (h @ w_hat).unsqueeze(-1) * w_hat
        if i == 2:
            h = h - 0.5 * v
        return h

    with (
        steer(model, v, layers=[1, 2], alpha=2.0),
        ablate(model, w, layers=1),
        steer(model, v, layers=[2], alpha=-2.5),
    ):
        got = model(ids).logits
    torch.testing.assert_close(got, manual_logits(model, ids, edit))


def _greedy(model, prompt, use_cache, **steer_kwargs):
    with steer(model, **steer_kwargs):
        return model.generate(
            prompt, max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0
        )


@torch.no_grad()
@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "response"])
def test_greedy_generation_same_with_and_without_kv_cache(model, positions):
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(4)) * 4
    kwargs = {"vector": v, "layers": [1, 2], "alpha": 1.0, "positions": positions}
    cached = _greedy(model, prompt, True, **kwargs)
    uncached = _greedy(model, prompt, False, **kwargs)
    assert torch.equal(cached, uncached)
    plain = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert not torch.equal(cached, plain)  # the steering did something


@torch.no_grad()
def test_positions_prompt_and_generated_edit_disjoint_tokens(model):
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(5))
    v = torch.randn(HIDDEN) * 4
    seq = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with capture(model, [1]) as plain:
        model(seq)
    # response: the last position of every cached forward, so the last prompt token too
    for positions, edited in (("prompt", slice(0, 5)), ("generated", slice(5, None)), ("response", slice(4, None))):
        with steer(model, v, layers=[1], positions=positions), capture(model, [1]) as got:
            model(seq[:, :5])  # the prompt: first forward
            model(seq)  # a no-cache step: continues the prompt
        delta = got[1][1][0] - plain[1][0][0]
        torch.testing.assert_close(delta[edited], v.expand_as(delta[edited]), atol=1e-4, rtol=0)
        untouched = torch.ones(seq.shape[1], dtype=torch.bool)
        untouched[edited] = False
        assert delta[untouched].abs().max() < 1e-5


@torch.no_grad()
def test_residual_norms_and_suggested_alpha_rule(model, ids):
    v = torch.randn(HIDDEN)
    inputs = [ids[0], ids[1]]
    norms = residual_norms(model, None, inputs, [2])
    alpha = suggested_alpha(model, None, v, 2, fraction=0.3, inputs=inputs)
    assert alpha * v.norm() == pytest.approx(0.3 * norms[2], rel=1e-5)


def test_bad_arguments_raise_one_line_errors(model):
    v = torch.randn(HIDDEN)
    # The message names no flag: the API and commands whose flag is --layer all reach it.
    with pytest.raises(InvalidArgumentError, match=r"^layers \[4\] out of range"), steer(model, v, layers=[4]):
        pass
    with (
        pytest.raises(InvalidArgumentError, match=r"\(64,\)"),
        steer(model, torch.randn(7), layers=0),
    ):
        pass
    with pytest.raises(NonFiniteError), steer(model, torch.full((HIDDEN,), float("nan")), layers=0):
        pass
    with (
        pytest.raises(InvalidArgumentError, match="zero vector"),
        ablate(model, torch.zeros(HIDDEN), layers=0),
    ):
        pass
    with pytest.raises(InvalidArgumentError, match="tau"), cap(model, v, layers=0):
        pass
    with (
        pytest.raises(InvalidArgumentError, match="positions"),
        steer(model, v, layers=0, positions="new"),
    ):
        pass
    assert hook_count(model) == 0


def test_public_names():
    assert pvrs.steer is steer and pvrs.ablate is ablate and pvrs.cap is cap
    from pvrs.steering import directions
    from pvrs.steering import interventions as steering

    assert steering.direction is directions.direction
    assert steering.assistant_axis_direction is directions.assistant_axis_direction


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_steers_block_outputs_and_agrees_with_and_without_cache(arch):
    model = tiny_model(arch, seed=2)
    size = model.config.get_text_config().hidden_size
    v = torch.randn(size, generator=torch.Generator().manual_seed(6)) * 3
    ids = torch.randint(0, VOCAB_TINY, (1, 7), generator=torch.Generator().manual_seed(7))
    with capture(model, [1]) as plain:
        model(ids)
    with steer(model, v, layers=[1], alpha=2.0), capture(model, [1]) as steered:
        model(ids)
    torch.testing.assert_close(steered[1][0], plain[1][0] + 2.0 * v, atol=1e-5, rtol=0)
    for positions in ("all", "generated"):
        kwargs = {"vector": v, "layers": [1, 2], "alpha": 1.0, "positions": positions}
        assert torch.equal(
            _greedy(model, ids, True, **kwargs), _greedy(model, ids, False, **kwargs)
        )
    assert hook_count(model) == 0


@torch.no_grad()
def test_mean_ablation_sets_every_projection_to_the_calibration_mean(model, ids):
    from pvrs.steering.interventions import mean_ablate

    v = torch.randn(HIDDEN) * 2
    v_hat = v / v.norm()
    inputs = [ids[0], ids[1].tolist()]
    with capture(model, [1]) as captured:
        for item in inputs:
            model(torch.as_tensor(item).view(1, -1))
    expected = float(torch.cat([t[0] for t in captured[1]]).matmul(v_hat).double().mean())
    before = hook_count(model)
    with mean_ablate(model, v, layers=[1], calibration=inputs) as means, capture(
        model, [1]
    ) as after:
        model(ids)
    assert means == {1: pytest.approx(expected, rel=1e-5)}
    torch.testing.assert_close(after[1][0] @ v_hat, torch.full((2, 9), expected), atol=1e-4, rtol=0)
    with capture(model, [1]) as plain:
        model(ids)
    # Only the component along v changes.
    diff = after[1][0] - plain[1][0]
    assert (diff - (diff @ v_hat).unsqueeze(-1) * v_hat).abs().max() < 1e-4
    with pytest.raises(InvalidArgumentError, match=r"mean=\.\.\. or calibration"), mean_ablate(
        model, v, layers=[1]
    ):
        pass
    with pytest.raises(RuntimeError), mean_ablate(model, v, layers=[0, 2], mean=0.5):
        raise RuntimeError("boom")
    assert hook_count(model) == before
