"""Chat generation for the steering commands: render a conversation with the model's chat
template, generate (greedy or seeded sampling, `pvrs.generate.SamplingConfig`), decode the
reply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from pvrs.errors import ModelError
from pvrs.generate import SamplingConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Neutral everyday requests: the default texts for the typical residual norm
# (`suggested_alpha`) and for calibrating a cap threshold in the CLI.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "How do I boil an egg so the yolk stays soft?",
    "Can you explain what a prime number is?",
    "Write a short note thanking a colleague for their help.",
    "What are some good habits for getting better sleep?",
    "Summarise the water cycle in a few sentences.",
    "How should I prepare for a job interview?",
    "What is the difference between weather and climate?",
    "Suggest a name for a small neighbourhood bakery.",
)


def as_chat(prompt: str) -> list[dict[str, str]]:
    """A one-question conversation with no system prompt (see
    `pvrs.generate.prompt_messages` for one with a persona)."""
    return [{"role": "user", "content": prompt}]


GREEDY = SamplingConfig(max_new_tokens=64, temperature=0.0)


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text with the assistant turn opened, ready for generation."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "this tokenizer has no chat template; use an instruction-tuned model or set "
            "tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    config: SamplingConfig = GREEDY,
) -> str:
    """The model's reply to `messages` (decoded without special tokens, stripped)."""
    text = render(tokenizer, messages)
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    torch.manual_seed(config.seed)
    sampling = not config.greedy
    kwargs = {"temperature": config.temperature, "top_p": config.top_p} if sampling else {}
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        **kwargs,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
