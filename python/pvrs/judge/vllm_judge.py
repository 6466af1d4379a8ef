"""A local judge on vLLM (`--local --engine vllm`): `LocalJudge`'s score, read from the same
tokens' probabilities, which vLLM returns for each prompt's next token (`max_tokens=1` with
`logprob_token_ids`: the full-vocabulary log-softmax of the raw logits at those ids, what
`LocalJudge` takes the softmax of). Prompts are rendered and tokenized as there, so both
engines score the same ids; vLLM started at the first score, and stopped by `close`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pvrs.extraction.generate import as_chat, render
from pvrs.judge.local import counted_tokens
from pvrs.judge.numbers import DEFAULT_MODE, weighted_score

if TYPE_CHECKING:
    from pvrs.engines.vllm_engine import VllmConfig

PROMPTS_PER_CALL = 256  # prompts per `LLM.generate`: scores reach the cache as each call ends


class VllmJudge:
    """`config.model` is the judge model; `name` identifies its weights in the cache key, which
    names the engine (`vllm:`): vLLM's kernels differ from transformers' in the last digits."""

    def __init__(self, config: VllmConfig, name: str) -> None:
        import torch

        from pvrs.engines.models import skeleton

        self.config, self.name = config, name
        # The weightless model gives the vocabulary and the dtype vLLM loads, as for extraction.
        self._model, self.tokenizer = skeleton(config.model, on_gpu=torch.cuda.is_available())
        self._tokens: dict[str, tuple[list[int], list[str]]] = {}
        self._counted(DEFAULT_MODE)  # a vocabulary with no number tokens fails before vLLM starts
        self._llm: Any = None

    @property
    def id(self) -> str:
        return f"vllm:{self.name}"

    def _counted(self, mode: str) -> tuple[list[int], list[str]]:
        if mode not in self._tokens:
            self._tokens[mode] = counted_tokens(self._model, self.tokenizer, mode, self.name)
        return self._tokens[mode]

    def close(self) -> None:
        from pvrs.engines.vllm_engine import stop_llm

        if self._llm is not None:
            stop_llm(self._llm)
            self._llm = None

    def score(
        self, prompts: Sequence[str], on_score: Callable[[int, float | None], object] | None = None,
        mode: str = DEFAULT_MODE,
    ) -> list[float | None]:
        from vllm import SamplingParams
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS

        from pvrs.engines.vllm_engine import start_llm

        ids, texts = self._counted(mode)
        if self._llm is None:
            dtype = str(next(self._model.parameters()).dtype).removeprefix("torch.")
            self._llm = start_llm(self.config, dtype)
        # A request returns at most MAX_LOGPROB_TOKEN_IDS ids: more go in several requests for
        # the same prompt (its prefix is cached).
        chunks = [ids[i : i + MAX_LOGPROB_TOKEN_IDS] for i in range(0, len(ids), MAX_LOGPROB_TOKEN_IDS)]
        params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=c) for c in chunks]
        tok = self.tokenizer
        scores: list[float | None] = []
        for start in range(0, len(prompts), PROMPTS_PER_CALL):
            encoded = [tok(render(tok, as_chat(p)), add_special_tokens=False)["input_ids"]
                       for p in prompts[start : start + PROMPTS_PER_CALL]]
            requests = [{"prompt_token_ids": e} for e in encoded for _ in chunks]
            outputs = self._llm.generate(requests, params * len(encoded), use_tqdm=False)
            for k in range(len(encoded)):
                probs: dict[int, float] = {}
                for out in outputs[k * len(chunks) : (k + 1) * len(chunks)]:
                    probs.update((i, math.exp(lp.logprob)) for i, lp in out.outputs[0].logprobs[0].items())
                value = weighted_score(zip(texts, (probs[i] for i in ids), strict=True), mode)
                if on_score is not None:
                    on_score(len(scores), value)
                scores.append(value)
        return scores
