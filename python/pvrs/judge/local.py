"""A judge that is a local transformers model: one forward pass per prompt, and the score is
the probability-weighted mean over the tokens that spell 0..100 in the next-token
distribution (Anthropic's persona_vectors judge, computed from logits instead of an API's
top logprobs, with its minimum mass on the numbers: below it, no score). No sampling, so a
score is deterministic for given weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pvrs.errors import JudgeError
from pvrs.extraction.generate import as_chat, render
from pvrs.judge.numbers import mass_score, number_value

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class LocalJudge:
    """`name` identifies the weights in the cache key (a model id or folder)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self._ids, self._values = self._number_tokens()

    @property
    def id(self) -> str:
        return f"local:{self.name}"

    def _number_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        vocab = min(len(self.tokenizer), self.model.get_output_embeddings().weight.shape[0])
        found = [(i, number_value(str(self.tokenizer.decode([i])))) for i in range(vocab)]
        pairs = [(i, v) for i, v in found if v is not None]
        if not pairs:
            raise JudgeError(f"local judge {self.name}: its vocabulary has no tokens for the numbers 0-100; use another model")
        device = next(self.model.parameters()).device
        ids, values = zip(*pairs, strict=True)
        return torch.tensor(ids, device=device), torch.tensor(values, dtype=torch.float32, device=device)

    def score(
        self, prompts: Sequence[str], on_score: Callable[[int, float | None], object] | None = None
    ) -> list[float | None]:
        import torch

        tok = self.tokenizer
        pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)  # masked out anyway
        device = self._ids.device
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
            probs = logits.float().softmax(-1)[:, self._ids]
            for mass, weighted in zip(probs.sum(-1).tolist(), (probs @ self._values).tolist(), strict=True):
                value = mass_score(mass, weighted)
                if on_score is not None:
                    on_score(len(scores), value)
                scores.append(value)
        return scores
