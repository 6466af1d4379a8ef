"""A judge that is a local transformers model: one forward pass per prompt, and the score is
read from the next-token distribution over the tokens its mode counts (0..100, the digits, or
YES/NO: see `pvrs.judge.numbers`), as Anthropic's persona_vectors judge reads an API's top
logprobs, with its minimum mass: below it, no score. No sampling, so a score is
deterministic for given weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pvrs.errors import JudgeError
from pvrs.extraction.generate import as_chat, render
from pvrs.judge.numbers import DEFAULT_MODE, REFUSAL, counts, weighted_score

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def counted_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, mode: str, name: str) -> tuple[list[int], list[str]]:
    """The ids and texts of the tokens of `model`'s vocabulary that a `mode` score reads (a
    weightless skeleton will do: only its output embedding's shape is read); `name` is the
    judge's in the error when there are none."""
    vocab = min(len(tokenizer), model.get_output_embeddings().weight.shape[0])
    texts = [str(tokenizer.decode([i])) for i in range(vocab)]
    ids = [i for i, text in enumerate(texts) if counts(text, mode)]
    found = {texts[i] for i in ids} - {REFUSAL}
    if not found or (mode == "yes/no" and len(found) < 2):
        what = "both YES and NO" if mode == "yes/no" else "the numbers " + ("0-9" if mode == "0-10" else "0-100")
        raise JudgeError(f"local judge {name}: its vocabulary has no tokens for {what}; use another model")
    return ids, [texts[i] for i in ids]


class LocalJudge:
    """`name` identifies the weights in the cache key (a model id or folder)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self._tokens: dict[str, tuple[torch.Tensor, list[str]]] = {}
        self._counted(DEFAULT_MODE)  # a vocabulary with no number tokens fails here

    @property
    def id(self) -> str:
        return f"local:{self.name}"

    def _counted(self, mode: str) -> tuple[torch.Tensor, list[str]]:
        """The ids and texts of the tokens a `mode` score reads (found once per mode)."""
        import torch

        if mode not in self._tokens:
            ids, texts = counted_tokens(self.model, self.tokenizer, mode, self.name)
            self._tokens[mode] = torch.tensor(ids, device=next(self.model.parameters()).device), texts
        return self._tokens[mode]

    def score(
        self, prompts: Sequence[str], on_score: Callable[[int, float | None], object] | None = None,
        mode: str = DEFAULT_MODE,
    ) -> list[float | None]:
        import torch

        tok = self.tokenizer
        pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)  # masked out anyway
        ids_of, texts_of = self._counted(mode)
        device = ids_of.device
        scores: list[float | None] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [render(tok, as_chat(p)) for p in prompts[start : start + self.batch_size]]
            encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            width = max(map(len, encoded))
            # Left padding puts every prompt's last token in the last column; explicit
            # positions make a padded prompt score as it would alone.
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            for row in logits.float().softmax(-1)[:, ids_of].tolist():
                value = weighted_score(zip(texts_of, row, strict=True), mode)
                if on_score is not None:
                    on_score(len(scores), value)
                scores.append(value)
        return scores
