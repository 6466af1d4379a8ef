"""Answer generation for `pvrs extract --generate`: the model answers the questions in persona
(the assistant-axis workflow), and the conversations are saved before extraction reads them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.chat import MERGE_SEPARATOR, analyze_template
from pvrs.errors import InputError
from pvrs.inputs import Persona, QAPair, read_rows

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 8

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def prompt_messages(tokenizer: PreTrainedTokenizerBase, system: str | None, question: str) -> list[dict[str, str]]:
    """The conversation up to the answer, placing the persona where extraction will see it."""
    if system is None:
        return [{"role": "user", "content": question}]
    if analyze_template(tokenizer, has_system=True).system_mode == "merged":
        return [{"role": "user", "content": system + MERGE_SEPARATOR + question}]
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    persona: Persona,
    variant: str,
    questions: Sequence[QAPair],
    sampling: SamplingConfig = SamplingConfig(),
) -> list[QAPair]:
    """`questions` answered by the model in persona; deterministic for a given seed."""
    import torch

    device = next(model.parameters()).device
    system = persona.system_prompt(variant)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[QAPair] = []
    try:
        for start in range(0, len(questions), sampling.batch_size):
            chunk = list(questions[start : start + sampling.batch_size])
            texts = [
                tokenizer.apply_chat_template(prompt_messages(tokenizer, system, q.question), tokenize=False, add_generation_prompt=True)
                for q in chunk
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(sampling.seed + start)
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
            kwargs.update({"do_sample": False} if sampling.greedy else {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p})
            with torch.inference_mode():
                generated = model.generate(**batch, **kwargs)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            for q, tokens in zip(chunk, new_tokens, strict=True):
                answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                out.append(replace(q, answer=answer or "…", persona_id=persona.id))
    finally:
        tokenizer.padding_side = side
    return out


def save_generations(path: Path, rows: Sequence[QAPair]) -> None:
    """JSONL in the QA input format, so a generated set can be fed back with --qa."""
    from pvrs.store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows).encode())


def load_scores(path: str | Path) -> dict[tuple[str, str], float]:
    """Judge scores keyed by (persona_id, sample id); rows need persona_id, qid (or sample_id), score."""
    scores: dict[tuple[str, str], float] = {}
    for i, row in enumerate(read_rows(Path(path))):
        sid = row.get("qid", row.get("sample_id"))
        if row.get("persona_id") is None or sid is None or row.get("score") is None:
            raise InputError(f"{path} row {i + 1}: needs persona_id, qid (or sample_id) and score")
        try:
            scores[(str(row["persona_id"]), str(sid))] = float(row["score"])
        except (TypeError, ValueError):
            raise InputError(f"{path} row {i + 1}: score {row['score']!r} is not a number") from None
    return scores


def filter_by_score(
    persona: Persona, rows: Sequence[QAPair], scores: dict[tuple[str, str], float], min_score: float
) -> list[QAPair]:
    """Keep samples whose score passes; unscored samples are dropped (a judge must vouch for them)."""
    return [r for r in rows if scores.get((persona.id, r.sample_id), float("-inf")) >= min_score]
