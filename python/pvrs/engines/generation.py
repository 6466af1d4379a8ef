"""Answers with transformers `generate`: a persona's rendered prompts continued in batches,
seeded per batch so a rerun (or a Ray replica) gives the same answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pvrs.engines.jobs import AnswerJob, QAPair, SamplingConfig

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


def generate_kwargs(tokenizer: PreTrainedTokenizerBase, config: SamplingConfig) -> dict[str, Any]:
    """`model.generate` arguments for `config` (no pad-token warning on models without one)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "pad_token_id": pad, "do_sample": not config.greedy}
    if not config.greedy:
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    return kwargs


def answer_job(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    job: AnswerJob,
    sampling: SamplingConfig,
    on_batch: Callable[[int], object] | None = None,
) -> list[QAPair]:
    """`job`'s questions answered by the model in persona; deterministic for a given seed.
    `on_batch(n)` hears each batch of `n` answers as it is done."""
    import torch

    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[QAPair] = []
    try:
        for start in range(0, len(job.questions), sampling.batch_size):
            chunk = job.questions[start : start + sampling.batch_size]
            texts = job.prompts[start : start + sampling.batch_size]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(sampling.seed + start)
            with torch.inference_mode():
                generated = model.generate(**batch, **generate_kwargs(tokenizer, sampling))
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            for q, tokens in zip(chunk, new_tokens, strict=True):
                answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                out.append(replace(q, answer=answer or "…", persona_id=job.persona.id))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        tokenizer.padding_side = side
    return out
