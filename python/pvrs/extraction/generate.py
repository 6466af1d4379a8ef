"""Generation: answers in persona for `pvrs extract --generate` (the assistant-axis workflow;
the conversations are saved before extraction reads them), and single replies for the
steering commands."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.engines.generation import answer_job, generate_kwargs
from pvrs.engines.jobs import AnswerJob, Persona, QAPair
from pvrs.engines.jobs import SamplingConfig as SamplingConfig
from pvrs.errors import InputError
from pvrs.extraction.inputs import qa_from_rows, read_rows
from pvrs.extraction.template import MERGE_SEPARATOR, analyze_template, require_chat_template
from pvrs.jsonio import read_json

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def prompt_messages(tokenizer: PreTrainedTokenizerBase, system: str | None, question: str) -> list[dict[str, str]]:
    """The conversation up to the answer, placing the persona where extraction will see it."""
    if system is None:
        return [{"role": "user", "content": question}]
    if analyze_template(tokenizer, has_system=True).system_mode == "merged":
        return [{"role": "user", "content": system + MERGE_SEPARATOR + question}]
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def prompt_text(tokenizer: PreTrainedTokenizerBase, system: str | None, question: str) -> str:
    """The rendered prompt a persona's answer continues (the assistant turn opened)."""
    return tokenizer.apply_chat_template(prompt_messages(tokenizer, system, question), tokenize=False, add_generation_prompt=True)


DEFAULT_SAMPLING = SamplingConfig()


def answer_request(
    tokenizer: PreTrainedTokenizerBase,
    persona: Persona,
    variant: str,
    questions: Sequence[QAPair],
    path: Path | None = None,
    key: dict[str, Any] | None = None,
) -> AnswerJob:
    """`questions` to answer in persona, each with its prompt rendered for any engine."""
    system = persona.system_prompt(variant)
    prompts = [prompt_text(tokenizer, system, q.question) for q in questions]
    return AnswerJob(persona, variant, list(questions), prompts, path, key or {})


def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    persona: Persona,
    variant: str,
    questions: Sequence[QAPair],
    sampling: SamplingConfig = DEFAULT_SAMPLING,
    on_batch: Callable[[int], object] | None = None,
) -> list[QAPair]:
    """`questions` answered by the model in persona with transformers; deterministic for a
    given seed. `on_batch(n)` hears each batch of `n` answers as it is done."""
    job = answer_request(tokenizer, persona, variant, questions)
    return answer_job(model, tokenizer, job, sampling, on_batch)


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
    """A one-question conversation with no system prompt (see `prompt_messages` for one
    with a persona)."""
    return [{"role": "user", "content": prompt}]


GREEDY = SamplingConfig(max_new_tokens=64, temperature=0.0)


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text with the assistant turn opened, ready for generation."""
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    config: SamplingConfig = GREEDY,
) -> str:
    """The model's reply to `messages` (decoded without special tokens, stripped)."""
    import torch

    text = render(tokenizer, messages)
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    torch.manual_seed(config.seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **generate_kwargs(tokenizer, config))
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def _settings_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".sampling.json")


def save_generations(path: Path, rows: Sequence[QAPair], key: Mapping[str, Any] | None = None) -> None:
    """JSONL in the QA input format, so a generated set can be fed back with --qa. With
    `key` (what decided the answers: model, prompt, template, sampling), a sidecar
    `<name>.sampling.json` records it and the file's sha256, so `saved_generations` can
    reuse the answers instead of generating them again."""
    from pvrs.store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows).encode()
    atomic_write_bytes(path, data)
    if key is not None:
        sidecar = {"key": dict(key), "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_bytes(_settings_path(path), json.dumps(sidecar, indent=1).encode())


def saved_generations(path: Path, questions: Sequence[QAPair], key: Mapping[str, Any]) -> list[QAPair] | None:
    """The answers saved at `path` when they are for exactly `questions` (same ids and texts,
    in order) under the same `key`, and the file is the one the sidecar describes;
    otherwise None (generate again)."""
    try:
        data = path.read_bytes()
        sidecar = read_json(_settings_path(path))
        if sidecar.get("sha256") != hashlib.sha256(data).hexdigest() or sidecar.get("key") != json.loads(json.dumps(dict(key))):
            return None
        saved = qa_from_rows(read_rows(path), str(path))
    except (OSError, ValueError, AttributeError, InputError):
        return None
    if [(r.qid, r.question) for r in saved] != [(q.qid, q.question) for q in questions]:
        return None
    return saved


def load_scores(path: str | Path) -> dict[tuple[str, str], float]:
    """Judge scores keyed by (persona_id, sample id); rows need persona_id, qid (or sample_id), score."""
    scores: dict[tuple[str, str], float] = {}
    for i, row in enumerate(read_rows(Path(path))):
        sid = row.get("qid", row.get("sample_id"))
        if row.get("persona_id") is None or sid is None or row.get("score") is None:
            raise InputError(f"{path} row {i + 1}: needs persona_id, qid (or sample_id) and score")
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise InputError(f"{path} row {i + 1}: score {row['score']!r} is not a number") from None
        if not 0 <= score <= 100:  # NaN too: a judge on another scale would pass or drop everything
            raise InputError(f"{path} row {i + 1}: score {row['score']!r} is not on the 0-100 scale; rescale the file")
        scores[(str(row["persona_id"]), str(sid))] = score
    return scores


def filter_by_score(
    persona: Persona, rows: Sequence[QAPair], scores: dict[tuple[str, str], float], min_score: float
) -> list[QAPair]:
    """Keep samples whose score passes; unscored samples are dropped (a judge must vouch for them)."""
    return [r for r in rows if scores.get((persona.id, r.sample_id), float("-inf")) >= min_score]
