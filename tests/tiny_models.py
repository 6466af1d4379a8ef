"""Tiny random-initialised causal LMs built from real architecture configs (no downloads)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
)

VOCAB = 256
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def tiny_config(arch: str, vocab_size: int = VOCAB) -> PretrainedConfig:
    config = _tiny_config(arch)
    config.vocab_size = vocab_size
    return config


def _tiny_config(arch: str) -> PretrainedConfig:
    if arch == "llama":
        return LlamaConfig(**_COMMON)
    if arch == "qwen2":
        return Qwen2Config(**_COMMON)
    if arch == "mistral":
        return MistralConfig(**_COMMON)
    if arch == "gemma2":
        return Gemma2Config(**_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)
    if arch == "phi3":
        return Phi3Config(**_COMMON, pad_token_id=0)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=512)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=512)
    raise ValueError(arch)


ARCHS = ("llama", "qwen2", "mistral", "gemma2", "phi3", "gpt_neox", "gpt2")


def tiny_model(arch: str = "llama", seed: int = 0, vocab_size: int = VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size)).eval()


def raw_final_block(model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """HF applies the final norm to the last entry of hidden_states; swap it for Identity so
    that entry is block L-1's raw output, as every other entry is block i's."""
    for owner_path, name in (("model", "norm"), ("transformer", "ln_f"), ("gpt_neox", "final_layer_norm")):
        owner = getattr(model, owner_path, None)
        if owner is not None and hasattr(owner, name):
            break
    else:
        raise AssertionError("no final norm found")

    @contextlib.contextmanager
    def swapped() -> Iterator[None]:
        norm = getattr(owner, name)
        setattr(owner, name, torch.nn.Identity())
        try:
            yield
        finally:
            setattr(owner, name, norm)

    return swapped()


def manual_logits(model: torch.nn.Module, ids: torch.Tensor, edit) -> torch.Tensor:
    """A Llama-family model's blocks run one by one on the whole sequence, `edit(h, layer)`
    applied to each block's output (no hooks at all): the hand computation that the steering
    hooks are checked against."""
    inner = model.model
    hidden = inner.embed_tokens(ids)
    position_ids = torch.arange(ids.shape[1]).unsqueeze(0)
    rotary = inner.rotary_emb(hidden, position_ids)
    for i, block in enumerate(inner.layers):
        out = block(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=rotary)
        hidden = edit(out[0] if isinstance(out, tuple) else out, i)
    return model.lm_head(inner.norm(hidden))
