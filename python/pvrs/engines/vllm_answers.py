"""Steered answers on vLLM, every request of a command in one batch, each with its own steering
spec or none (`pvrs.engines.vllm_steering`): what `pvrs steer`, `eval` and `trait` run with
`--engine vllm`. Prompts are pvrs's renderings, tokenized as transformers' `generate`
tokenizes them, sampled with the same settings and decoded the same way, so greedy answers
equal the transformers hooks' token for token (fp32)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pvrs.engines.jobs import SamplingConfig
    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.engines.vllm_steering import SteerableLLM


@contextmanager
def steerable(config: VllmConfig, vectors: Mapping[str, np.ndarray], dtype: str, **extra: Any) -> Iterator[SteerableLLM]:
    """A steerable `vllm.LLM` for `config` with `vectors` (name -> `(num_layers, hidden)`)
    registered, the weights in `dtype` (`extra`: more `vllm.LLM` arguments); shut down on
    leaving, so another engine can start."""
    import torch

    from pvrs.engines.vllm_engine import llm_kwargs
    from pvrs.engines.vllm_steering import SteerableLLM

    kwargs = llm_kwargs(config, dtype)
    # A steerable LLM is always eager: the worker's hooks never run in a compiled forward.
    kwargs.pop("enforce_eager", None)
    kwargs.pop("compilation_config", None)
    llm = SteerableLLM(kwargs.pop("model"), {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in vectors.items()},
                       **kwargs, **extra)
    try:
        yield llm
    finally:
        llm.close()


def steered_answers(
    llm: SteerableLLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    specs: Sequence[Any],
    sampling: SamplingConfig,
) -> list[str]:
    """The answer to each rendered prompt (assistant turn opened) under its spec (None:
    unsteered), all in one `generate`; every spec is checked before anything runs. Each
    request is seeded with `sampling.seed`, as transformers' `generate` seeds each reply."""
    from pvrs.engines.vllm_engine import sampling_params, stop_ids

    params = sampling_params(sampling, sampling.seed, stop_ids(tokenizer))
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    outputs = llm.generate(ids, specs, params)
    return [tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True).strip() for out in outputs]
