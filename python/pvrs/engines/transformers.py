"""The extraction engine: per-sample masked means of every requested layer's residual stream,
for several mask strategies at once, in one batched forward pass that stops after the last
requested layer. Optionally encodes a shared prompt prefix once and reuses its KV cache.

Row `i` of the result is the output of decoder block `i` (DESIGN.md layer convention)."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pvrs.defaults import DEFAULT_BATCH_TOKENS
from pvrs.engines.hooks import decoder_layers, forward_hooks, hidden_of
from pvrs.errors import InvalidArgumentError, MaskError, ModelError

# A shared prefix shorter than this is cheaper to recompute than to copy a KV cache for.
MIN_PREFIX_REUSE = 16


class _StopForward(Exception):
    """Raised by the hook of the last requested layer to skip the rest of the model."""


@dataclass(frozen=True)
class EngineConfig:
    layers: Sequence[int] | None = None
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    padding_side: str = "right"
    prefix_reuse: bool = True

    def __post_init__(self) -> None:
        # Checked when the run is set up, before any model work.
        if self.batch_tokens < 1:
            raise InvalidArgumentError(f"--batch-tokens must be >= 1, got {self.batch_tokens}")


@dataclass
class SampleMeans:
    """`mean[s, l]` is the mean over samples of each sample's mean over strategy s's tokens at
    layer `layers[l]` (DESIGN.md pooling: the persona's vector); `means[n, s, l]` is sample n's
    own mean, kept only when asked for (`per_sample=True`)."""

    mean: np.ndarray  # (S, L', H) float32
    means: np.ndarray | None  # (N, S, L', H) float32, or None
    counts: np.ndarray  # (N, S) int64: tokens averaged
    layers: list[int]
    conversation_tokens: int  # every sample's full length: the work a run without reuse does
    tokens_computed: int  # what the forwards encoded: a reused prefix once, then each suffix
    batch_tokens: int  # the token budget in force at the end (lower after CUDA out-of-memory)
    host_bytes: int  # result bytes that left the model's device: (S, L', H) float32, plus means if kept


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    out = sorted({int(i) + n if int(i) < 0 else int(i) for i in layers})
    bad = [i for i in out if not 0 <= i < n]
    if bad or not out:
        # Named "layers", not a flag: `steer(layers=)`, `pvrs steer --layer` and `eval` all land here.
        raise InvalidArgumentError(f"layers {list(layers)} out of range: the model has {n} decoder blocks (0..{n - 1})")
    return out


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest-first so that batch_size * longest <= batch_tokens (at least one)."""
    if batch_tokens < 1:
        raise InvalidArgumentError(f"--batch-tokens must be >= 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _common_prefix(seqs: Sequence[np.ndarray]) -> int:
    """Length of the longest token prefix shared by all sequences, leaving >= 1 token each."""
    first = seqs[0]
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs[1:]):
        n += 1
    return n


class _Collector:
    """Hooks that turn each requested layer's hidden states into masked sums, in place."""

    def __init__(self, model: nn.Module, layers: list[int], device: torch.device) -> None:
        self.blocks = decoder_layers(model)
        self.layers = layers
        self.device = device  # where sums live; with device_map="auto" blocks sit elsewhere
        self.weights: torch.Tensor | None = None  # (B, S, T) float32
        self.sums: torch.Tensor | None = None  # (B, S, L', H) float32
        self.keep_hidden: list[torch.Tensor] | None = None  # prefix pass: (T, H) per layer

    def _hook(self, slot: int, last: bool) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            hidden = hidden_of(output).to(self.device, torch.float32, non_blocking=True)
            if self.keep_hidden is not None:
                self.keep_hidden.append(hidden[0])
            else:
                assert self.weights is not None and self.sums is not None
                self.sums[:, :, slot, :] += torch.bmm(self.weights, hidden)
            if last:
                raise _StopForward

        return hook

    def run(self, model: nn.Module, **inputs: object) -> None:
        hooks = [self._hook(slot, slot == len(self.layers) - 1) for slot in range(len(self.layers))]
        with forward_hooks([self.blocks[i] for i in self.layers], hooks), contextlib.suppress(_StopForward):
            model(**inputs)


def cache_kwarg(model: nn.Module) -> str:
    """transformers >= 5.2x names the KV-cache argument `cache`; older releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # Explicit positions make left and right padding (and a cached prefix) give the same result.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _pad(seqs: Sequence[np.ndarray], side: str, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    attn = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = seq
        attn[row, cols] = 1
    return ids, attn


def _pad_masks(masks: Sequence[np.ndarray], width: int, side: str) -> np.ndarray:
    out = np.zeros((len(masks), masks[0].shape[0], width), dtype=np.float32)
    for row, m in enumerate(masks):
        t = m.shape[1]
        cols = slice(0, t) if side == "right" else slice(width - t, width)
        out[row, :, cols] = m
    return out


class _ToHost:
    """Per-sample means leaving the device. On CUDA each batch's go to a pinned buffer on a side
    stream, so the copy overlaps the next batch's forward instead of stalling the GPU; they land
    in `out` when `drain` finds them done. Elsewhere they are copied at once."""

    def __init__(self, out: np.ndarray, device: torch.device) -> None:
        self.out = out
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pending: list[tuple[list[int], torch.Tensor, torch.cuda.Event]] = []

    def put(self, idx: list[int], values: torch.Tensor) -> None:
        if self.stream is None:
            self.out[idx] = values.cpu().numpy()
            return
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(values.device))
        with torch.cuda.stream(self.stream):
            host.copy_(values, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        values.record_stream(self.stream)  # the allocator must not reuse it before the copy ends
        self.pending.append((idx, host, done))

    def drain(self, keep: int = 0) -> None:
        """Land the copies in `out`, waiting for all but the `keep` most recent."""
        while len(self.pending) > keep:
            idx, host, done = self.pending.pop(0)
            done.synchronize()
            self.out[idx] = host.numpy()


def checked_inputs(
    input_ids: Sequence[Sequence[int] | np.ndarray],
    masks: Sequence[np.ndarray],
    sample_ids: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Token ids as int64 arrays, masks as (S, T) bool arrays matching them (a 1-D mask is one
    strategy) and the ids errors name samples by; every engine checks its inputs here."""
    seqs = [np.asarray(s, dtype=np.int64) for s in input_ids]
    if len(seqs) != len(masks) or not seqs:
        raise InvalidArgumentError(f"got {len(seqs)} token sequences and {len(masks)} masks; need the same, >= 1")
    ids = list(sample_ids) if sample_ids is not None else [f"#{i}" for i in range(len(seqs))]
    mask_arrays = []
    for n, (seq, m) in enumerate(zip(seqs, masks, strict=True)):
        m = np.asarray(m, dtype=bool)
        m = m[None, :] if m.ndim == 1 else m
        if m.ndim != 2 or m.shape[1] != len(seq):
            raise InvalidArgumentError(f"sample {ids[n]}: mask shape {m.shape} does not match {len(seq)} tokens")
        if not m.any(axis=1).all():
            raise MaskError(f"sample {ids[n]}: a mask strategy selects no tokens")
        mask_arrays.append(m)
    if any(m.shape[0] != mask_arrays[0].shape[0] for m in mask_arrays):
        raise InvalidArgumentError("every sample needs a mask row for each strategy")
    return seqs, mask_arrays, ids


def sample_means(
    model: nn.Module,
    input_ids: Sequence[Sequence[int] | np.ndarray],
    masks: Sequence[np.ndarray],
    config: EngineConfig = EngineConfig(),
    *,
    sample_ids: Sequence[str] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    per_sample: bool = True,
) -> SampleMeans:
    """Masked means for S strategies at once: their mean over samples, and each sample's own
    when `per_sample` (they then leave the device every batch; without them only the
    (S, L', H) mean does, once).

    `masks[n]` is a bool array (S, len(input_ids[n])). `on_batch(n_samples, n_tokens)` is
    called after each batch (progress bars) with its conversation tokens, prefix included
    whether or not it was reused, so rates compare across `prefix_reuse`."""
    if config.padding_side not in ("left", "right"):
        raise InvalidArgumentError(f"padding side must be 'left' or 'right', got {config.padding_side!r}")
    seqs, mask_arrays, ids_for_errors = checked_inputs(input_ids, masks, sample_ids)
    n_strategies = mask_arrays[0].shape[0]

    layers = resolve_layers(model, config.layers)
    embeddings = model.get_input_embeddings().weight
    device = embeddings.device  # inputs go where the embeddings are (device_map="auto" too)
    hidden_size, pad_id = model_sizes(model)
    collector = _Collector(model, layers, device)

    prefix_len = _common_prefix(seqs) if config.prefix_reuse and len(seqs) > 1 else 0
    prefix_cache = None
    prefix_hidden: torch.Tensor | None = None
    if prefix_len >= MIN_PREFIX_REUSE:
        try:
            prefix_cache, prefix_hidden = _encode_prefix(model, collector, seqs[0][:prefix_len], device)
        except torch.cuda.OutOfMemoryError:
            raise ModelError(
                f"CUDA out of memory encoding the shared persona prompt ({prefix_len} tokens); free "
                "GPU memory, or spread the model with --device-map auto"
            ) from None
    else:
        prefix_len = 0

    means = np.zeros((len(seqs), n_strategies, len(layers), hidden_size), dtype=np.float32) if per_sample else None
    to_host = _ToHost(means, device) if means is not None else None
    # fp32 on the device: the sum over samples of their means, so per-sample means need not leave it.
    total = torch.zeros((n_strategies, len(layers), hidden_size), dtype=torch.float32, device=device)
    counts = np.stack([m.sum(axis=1) for m in mask_arrays]).astype(np.int64)
    tokens = prefix_len
    budget = config.batch_tokens
    # Every row carries its own copy of the prefix cache and attends over it: it costs its
    # full length, as in a forward without reuse.
    lengths = [len(s) for s in seqs]
    pending = sorted(range(len(seqs)), key=lambda i: -lengths[i])
    while pending:
        batch = plan_batches([lengths[i] for i in pending], budget)[0]
        idx = [pending[j] for j in batch]
        try:
            sums = _forward_batch(
                model, collector, [seqs[i][prefix_len:] for i in idx], [mask_arrays[i] for i in idx],
                prefix_len, prefix_cache, prefix_hidden, config.padding_side, pad_id, hidden_size, device,
            )
        except torch.cuda.OutOfMemoryError:
            if len(idx) == 1:
                raise ModelError(
                    f"CUDA out of memory on one sample ({ids_for_errors[idx[0]]}, {lengths[idx[0]]} "
                    "tokens); free GPU memory, or spread the model with --device-map auto"
                ) from None
            budget = max(1, min(budget, len(idx) * lengths[idx[0]]) // 2)
            _warn_oom_once(len(idx), budget)
            sums = None
        if sums is None:  # out of the except block, so its traceback no longer holds tensors
            torch.cuda.empty_cache()
            continue
        done = set(idx)
        pending = [i for i in pending if i not in done]
        with torch.inference_mode():
            batch_means = sums / torch.as_tensor(counts[idx], device=sums.device)[:, :, None, None]
            total += batch_means.sum(dim=0)
        if to_host is not None:
            to_host.put(idx, batch_means)
            to_host.drain(keep=1)  # the previous batch's copy overlapped this batch's forward
        tokens += sum(lengths[i] - prefix_len for i in idx)
        if on_batch:
            on_batch(len(idx), sum(lengths[i] for i in idx))
    if to_host is not None:
        to_host.drain()
    mean = (total / len(seqs)).cpu().numpy()
    return SampleMeans(
        mean=mean, means=means, counts=counts, layers=layers, conversation_tokens=sum(lengths),
        tokens_computed=tokens, batch_tokens=budget, host_bytes=mean.nbytes + (0 if means is None else means.nbytes),
    )


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def max_positions(model: nn.Module) -> int | None:
    """The sequence length the model was built for (`max_position_embeddings`, GPT-2's
    `n_positions`), or None when its config does not say."""
    text = _text_config(model)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_sizes(model: nn.Module) -> tuple[int, int]:
    """The residual width (not the embedding width: OPT projects its embeddings) and a pad id
    inside the vocabulary (some configs say -1; pads are masked out, any valid id will do)."""
    text = _text_config(model)
    width = getattr(text, "hidden_size", None)
    hidden_size = int(width) if isinstance(width, int) else int(model.get_input_embeddings().weight.shape[1])
    pad = getattr(text, "pad_token_id", None)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    pad_id = int(pad) if isinstance(pad, int) and 0 <= pad < vocab else 0
    return hidden_size, pad_id


def _encode_prefix(
    model: nn.Module, collector: _Collector, prefix: np.ndarray, device: torch.device
) -> tuple[object, torch.Tensor]:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.as_tensor(prefix, device=device)[None]
    collector.keep_hidden = []
    try:
        with torch.inference_mode():
            collector.run(
                model,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1], device=device)[None],
                use_cache=True,
                **{cache_kwarg(model): cache},
            )
        hidden = torch.stack(collector.keep_hidden)  # (L', P, H)
    finally:
        collector.keep_hidden = None
    return cache, hidden


def _forward_batch(
    model: nn.Module,
    collector: _Collector,
    seqs: list[np.ndarray],
    masks: list[np.ndarray],
    prefix_len: int,
    prefix_cache: object | None,
    prefix_hidden: torch.Tensor | None,
    padding_side: str,
    pad_id: int,
    hidden_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Masked sums (B, S, L', H) of one batch; the prefix's share comes from `prefix_hidden`."""
    if prefix_cache is not None:
        # Pads between the cached prefix and the suffix would shift sliding attention windows
        # (they count cache slots), so suffixes are always right-padded.
        padding_side = "right"
    ids_np, attn_np = _pad(seqs, padding_side, pad_id)
    width = ids_np.shape[1]
    suffix_masks = [m[:, prefix_len:] for m in masks]
    weights = torch.as_tensor(_pad_masks(suffix_masks, width, padding_side), device=device)
    ids = torch.as_tensor(ids_np, device=device)
    attn = torch.as_tensor(attn_np, device=device)
    inputs: dict[str, object] = {"input_ids": ids}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(seqs))  # type: ignore[attr-defined]
        full = torch.cat([torch.ones((len(seqs), prefix_len), dtype=attn.dtype, device=device), attn], dim=1)
        inputs.update(attention_mask=full, position_ids=_positions(full)[:, prefix_len:], use_cache=True)
        inputs[cache_kwarg(model)] = cache
    else:
        inputs.update(attention_mask=attn, position_ids=_positions(attn), use_cache=False)
    with torch.inference_mode():
        sums = torch.zeros((len(seqs), masks[0].shape[0], len(collector.layers), hidden_size), device=device)
        if prefix_hidden is not None:
            head = torch.as_tensor(np.stack([m[:, :prefix_len] for m in masks]), dtype=torch.float32, device=device)
            sums += torch.einsum("bsp,lph->bslh", head, prefix_hidden)
        collector.weights, collector.sums = weights, sums
        try:
            collector.run(model, **inputs)
        finally:
            collector.weights, collector.sums = None, None
    return sums


_oom_warned = False


def _warn_oom_once(size: int, budget: int) -> None:
    global _oom_warned
    if not _oom_warned:
        import sys

        print(
            f"pvrs: CUDA out of memory on a batch of {size} samples; continuing with --batch-tokens "
            f"{budget} (pass a lower --batch-tokens to avoid this)",
            file=sys.stderr,
        )
        _oom_warned = True


def extract_activations(
    model: nn.Module,
    input_ids_list: Sequence[Sequence[int] | np.ndarray],
    token_masks: Sequence[np.ndarray],
    *,
    layers: Sequence[int] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> np.ndarray:
    """The reference tool's call: one strategy's masks; returns (num_layers, hidden_size), the
    mean over samples of each sample's masked mean."""
    result = sample_means(model, input_ids_list, [np.asarray(m, dtype=bool)[None] for m in token_masks],
                          EngineConfig(layers=layers, batch_tokens=batch_tokens), per_sample=False)
    return result.mean[0]
