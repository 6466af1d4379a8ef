"""The reduction `pvrs.engines.vllm_connector` runs inside vLLM: one request's masked means read
from vLLM's hidden-state cache. Torch only (no vLLM), so it is tested where vLLM is absent."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Layers gathered and reduced at a time: bounds the copy of one request's states (tokens x
# layers x hidden) however many layers are captured; it sits outside vLLM's memory budget.
LAYER_CHUNK = 8


def masked_means(
    cache: torch.Tensor, block_ids: Sequence[int], num_tokens: int, spans: list[list[list[int]]], layer_chunk: int = LAYER_CHUNK
) -> torch.Tensor:
    """`(S, L, H)` fp32: for each strategy (`spans`: its `[start, end)` token ranges), the mean
    of the states of one request's first `num_tokens` tokens, which `cache` (blocks, L,
    block_size, H) holds in `block_ids`, in order. `layer_chunk` layers are gathered at a time,
    so no copy of all layers' states is ever made."""
    size = cache.shape[2]
    blocks = torch.as_tensor(list(block_ids), dtype=torch.long)
    slots = (blocks[:, None] * size + torch.arange(size)[None, :]).flatten()[:num_tokens].to(cache.device)
    block, offset = slots // size, slots % size
    weights = torch.zeros((len(spans), num_tokens), dtype=torch.float32, device=cache.device)
    for s, ranges in enumerate(spans):
        for start, end in ranges:
            weights[s, start:end] = 1.0
    counts = weights.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a mask strategy selects no tokens")
    layers, hidden = cache.shape[1], cache.shape[3]
    out = torch.empty((len(spans), layers, hidden), dtype=torch.float32, device=cache.device)
    for first in range(0, layers, layer_chunk):
        # Two index tensors around a slice: the result is (T, chunk, H).
        states = cache[block, first : first + layer_chunk, offset].to(torch.float32)
        out[:, first : first + layer_chunk] = torch.einsum("st,tlh->slh", weights, states)
        del states
    return out / counts[:, None, None]
