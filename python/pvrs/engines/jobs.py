"""What the extract driver hands an engine and what it gets back: personas and QA rows, the
sampling settings, a persona's questions to answer, and each persona's outcome. Here, below
extraction, so that the engines (transformers, Ray, vLLM) can be read without it; the
extraction modules re-export these names where they were first defined."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvrs.errors import InputError

BASELINE_ID = "baseline_assistant"
VARIANTS = ("templated", "biography")


@dataclass(frozen=True)
class Persona:
    """A persona: its system prompt in two lengths, plus free attributes (used by probes)."""

    id: str
    name: str
    templated: str | None = None  # None: the field is missing from the persona file
    biography: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.id == BASELINE_ID

    def system_prompt(self, variant: str) -> str | None:
        """The system prompt for `variant`; None for the baseline (no system prompt at all)."""
        if variant not in VARIANTS:
            raise InputError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if self.is_baseline:
            return None
        text = self.templated if variant == "templated" else self.biography
        if text is None or not text.strip():
            state = "no" if text is None else "an empty"
            raise InputError(
                f"persona {self.id!r} has {state} {variant!r} field; fill it in or drop --variants {variant}"
            )
        return text


@dataclass(frozen=True)
class QAPair:
    """One question/answer; `persona_id` None means it is shared by every persona."""

    qid: str
    question: str
    answer: str
    persona_id: str | None = None
    type: str = "explicit"
    split: str = "train"

    @property
    def sample_id(self) -> str:
        return self.qid


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; `temperature <= 0` means greedy. Sampling is seeded per call."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 8

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class AnswerJob:
    """One persona x variant whose questions the model must answer, and where the answers go.
    `prompts` are the rendered prompts (chat template applied, assistant turn opened), one per
    question: every engine continues exactly these texts."""

    persona: Persona
    variant: str
    questions: list[QAPair]
    prompts: list[str]
    path: Path | None
    key: dict[str, Any]


@dataclass
class PersonaOutcome:
    persona_id: str
    variant: str
    status: str  # "written" | "skipped" | "failed"
    reason: str = ""
    n_samples: int = 0
    n_tokens: int = 0
