"""The extraction engine against an independent computation: one sample at a time,
`output_hidden_states=True`, per-sample masked mean, then the mean over samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pvrs import MaskError
from pvrs.engines.hooks import decoder_layers
from pvrs.engines.transformers import EngineConfig, extract_activations, plan_batches, sample_means

from tests.tiny_models import ARCHS, VOCAB, raw_final_block, tiny_model

ATOL = 1e-5


def _samples(seed: int, n: int = 7, prefix: int = 0, strategies: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    shared = rng.integers(1, VOCAB, prefix)
    seqs, masks = [], []
    for _ in range(n):
        length = int(rng.integers(3, 30))
        seqs.append(np.concatenate([shared, rng.integers(1, VOCAB, length)]))
        m = rng.random((strategies, len(seqs[-1]))) < 0.3
        m[np.arange(strategies), rng.integers(0, len(seqs[-1]), strategies)] = True
        if prefix:
            m[0, :prefix] = True  # a strategy living in the shared prefix, like persona_mean
            m[0, prefix:] = False
        masks.append(m)
    return seqs, masks


def _reference(model: torch.nn.Module, seqs: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """(N, S, L, H) per-sample masked means from output_hidden_states, one sample per pass."""
    out = []
    with torch.no_grad(), raw_final_block(model):
        for seq, m in zip(seqs, masks, strict=True):
            hs = model(torch.as_tensor(seq)[None], output_hidden_states=True).hidden_states[1:]
            h = torch.stack([x[0] for x in hs]).double().numpy()  # (L, T, H)
            out.append(np.stack([h[:, row].mean(axis=1) for row in m]))
    return np.stack(out)


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_convention_is_block_output(arch: str) -> None:
    """Check the oracle itself: hidden_states[i + 1] is decoder block i's output."""
    model = tiny_model(arch)
    seen = []
    blocks = decoder_layers(model)
    handles = [b.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o)) for b in blocks]
    with torch.no_grad(), raw_final_block(model):
        hs = model(torch.arange(1, 9)[None], output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    assert len(hs) == len(blocks) + 1
    for i, block_output in enumerate(seen):
        torch.testing.assert_close(hs[i + 1], block_output)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_tokens", [1, 64, 10_000])
def test_engine_matches_output_hidden_states(arch: str, padding_side: str, batch_tokens: int) -> None:
    model = tiny_model(arch)
    seqs, masks = _samples(seed=1)
    expected = _reference(model, seqs, masks)
    got = sample_means(model, seqs, masks, EngineConfig(batch_tokens=batch_tokens, padding_side=padding_side))
    np.testing.assert_allclose(got.means, expected, atol=ATOL, rtol=1e-4)
    assert got.counts.tolist() == [m.sum(axis=1).tolist() for m in masks]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_prefix_reuse_gives_the_same_vectors(arch: str, padding_side: str) -> None:
    model = tiny_model(arch)
    seqs, masks = _samples(seed=2, prefix=24)
    expected = _reference(model, seqs, masks)
    reused = sample_means(model, seqs, masks, EngineConfig(batch_tokens=64, padding_side=padding_side, prefix_reuse=True))
    plain = sample_means(model, seqs, masks, EngineConfig(batch_tokens=64, padding_side=padding_side, prefix_reuse=False))
    assert reused.tokens_computed < plain.tokens_computed  # the prefix really was encoded once
    assert reused.conversation_tokens == plain.conversation_tokens == plain.tokens_computed
    np.testing.assert_allclose(reused.means, expected, atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(plain.means, expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prefix", [0, 24])
def test_grouped_mean_stays_on_the_device_until_the_end(arch: str, prefix: int) -> None:
    """Without per-sample means only the (S, L, H) mean over samples leaves the device."""
    model = tiny_model(arch)
    seqs, masks = _samples(seed=8, prefix=prefix)
    expected = _reference(model, seqs, masks)
    grouped = sample_means(model, seqs, masks, EngineConfig(batch_tokens=64), per_sample=False)
    assert grouped.means is None
    np.testing.assert_allclose(grouped.mean, expected.mean(axis=0), atol=ATOL, rtol=1e-4)
    vector_bytes = int(np.prod(expected.shape[1:])) * 4
    assert grouped.host_bytes == vector_bytes
    kept = sample_means(model, seqs, masks, EngineConfig(batch_tokens=64))
    np.testing.assert_allclose(kept.means, expected, atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(kept.mean, grouped.mean, atol=ATOL)
    assert kept.host_bytes == (len(seqs) + 1) * vector_bytes


def test_layer_subset_and_negative_indices() -> None:
    model = tiny_model("llama")
    seqs, masks = _samples(seed=3)
    expected = _reference(model, seqs, masks)
    got = sample_means(model, seqs, masks, EngineConfig(layers=[1, -1]))
    assert got.layers == [1, 3]
    np.testing.assert_allclose(got.means, expected[:, :, [1, 3]], atol=ATOL, rtol=1e-4)


def test_forward_stops_after_the_last_requested_layer() -> None:
    model = tiny_model("llama")
    called = []
    handles = [blk.register_forward_hook(lambda m, a, o, i=i: called.append(i)) for i, blk in enumerate(decoder_layers(model))]
    head = model.lm_head.register_forward_hook(lambda m, a, o: called.append("lm_head"))
    seqs, masks = _samples(seed=4, n=2)
    try:
        sample_means(model, seqs, masks, EngineConfig(layers=[1]))
    finally:
        for h in [*handles, head]:
            h.remove()
    assert set(called) == {0, 1}


def test_hooks_are_removed_after_extraction() -> None:
    model = tiny_model("llama")
    seqs, masks = _samples(seed=5, n=2)
    sample_means(model, seqs, masks)
    assert all(not blk._forward_hooks for blk in decoder_layers(model))


def test_reference_api_extract_activations() -> None:
    model = tiny_model("qwen2")
    seqs, masks = _samples(seed=6, strategies=1)
    expected = _reference(model, seqs, masks)[:, 0].mean(axis=0)
    got = extract_activations(model, [s.tolist() for s in seqs], [m[0] for m in masks])
    assert got.shape == (4, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-4)


def test_empty_mask_is_an_error_naming_the_sample() -> None:
    model = tiny_model("llama")
    seqs = [np.arange(1, 6)]
    with pytest.raises(MaskError, match="sample q7"):
        sample_means(model, seqs, [np.zeros((1, 5), bool)], sample_ids=["q7"])


def test_plan_batches_respects_the_token_budget() -> None:
    lengths = [5, 30, 12, 12, 7, 1]
    batches = plan_batches(lengths, 30)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 30


def test_cuda_out_of_memory_lowers_the_budget_and_keeps_the_result(monkeypatch, capsys) -> None:
    # CPU stand-in: the forward "runs out of memory" on batches over 2 samples.
    from pvrs.engines import transformers as engine

    model = tiny_model("llama")
    seqs, masks = _samples(3, n=7, prefix=20)
    expected = sample_means(model, seqs, masks, EngineConfig(batch_tokens=10_000))
    real = engine._forward_batch
    sizes: list[int] = []

    def flaky(model, collector, batch_seqs, *args):
        sizes.append(len(batch_seqs))
        if len(batch_seqs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, collector, batch_seqs, *args)

    monkeypatch.setattr(engine, "_forward_batch", flaky)
    monkeypatch.setattr(engine, "_oom_warned", False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    got = sample_means(model, seqs, masks, EngineConfig(batch_tokens=10_000))
    np.testing.assert_allclose(got.means, expected.means, atol=ATOL)
    first_fit = next(i for i, n in enumerate(sizes) if n <= 2)
    assert got.batch_tokens < 10_000 and max(sizes[first_fit:]) <= 2  # it stays lowered
    assert "continuing with --batch-tokens" in capsys.readouterr().err

    def always(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine, "_forward_batch", always)
    with pytest.raises(engine.ModelError, match=r"CUDA out of memory on one sample \(q0"):
        sample_means(model, seqs[:1], masks[:1], EngineConfig(batch_tokens=10_000), sample_ids=["q0"])


def test_residual_width_and_pad_id_come_from_the_config() -> None:
    # OPT projects 16-wide embeddings up to a 32-wide residual stream; pad id -1 is invalid.
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=VOCAB, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=2,
                       ffn_dim=64, num_attention_heads=4, max_position_embeddings=128, pad_token_id=-1)  # fmt: skip
    model = OPTForCausalLM(config).eval()
    seqs, masks = _samples(5, n=4)
    got = sample_means(model, seqs, masks, EngineConfig(batch_tokens=64))
    assert got.means.shape == (4, 3, 2, 32)
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
               for b in decoder_layers(model)]  # fmt: skip
    with torch.no_grad():
        model(torch.as_tensor(seqs[0])[None])
    for h in handles:
        h.remove()
    want = torch.stack([s[0][torch.as_tensor(masks[0][1])].mean(0) for s in seen]).numpy()
    np.testing.assert_allclose(got.means[0, 1], want, atol=ATOL)
