"""Mask strategies: which tokens of a conversation a persona vector averages (DESIGN.md)."""

from __future__ import annotations

from enum import Enum

from pvrs.errors import InputError


class MaskStrategy(str, Enum):
    """Lower-case values are the folder names on disk."""

    PERSONA_MEAN = "persona_mean"
    PERSONA_LAST = "persona_last"
    QUESTION_LAST = "question_last"
    QUESTION_LAST_SPECIAL = "question_last_special"
    ANSWER_PREVIOUS = "answer_previous"
    ANSWER_FIRST = "answer_first"
    ANSWER_LAST = "answer_last"
    ANSWER_MEAN = "answer_mean"

    def __str__(self) -> str:
        return self.value


ALL_STRATEGIES: tuple[MaskStrategy, ...] = tuple(MaskStrategy)
DEFAULT_STRATEGY = MaskStrategy.ANSWER_MEAN


def parse_strategies(names: str | MaskStrategy | list[str | MaskStrategy] | tuple[str | MaskStrategy, ...]) -> list[MaskStrategy]:
    """Accept names, enum members or `all`; keep order, drop duplicates."""
    items = [names] if isinstance(names, (str, MaskStrategy)) else list(names)
    out: list[MaskStrategy] = []
    for item in items:
        if isinstance(item, str) and item.lower() == "all":
            chosen: tuple[MaskStrategy, ...] = ALL_STRATEGIES
        else:
            try:
                chosen = (MaskStrategy(str(item).lower()),)
            except ValueError:
                valid = ", ".join(s.value for s in ALL_STRATEGIES)
                raise InputError(f"unknown mask strategy {item!r}; choose from {valid} or 'all'") from None
        out.extend(s for s in chosen if s not in out)
    return out
