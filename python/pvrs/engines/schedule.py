"""Schedules over generation steps for an added steering vector, one definition for the
transformers hooks (`pvrs.steering.interventions.steer`) and the vLLM worker, so that both
steer token for token alike.

A token at absolute position `p` of a request whose prompt has `P` tokens is at step
`g = max(0, p - (P - 1))`: every prompt token, the last one included, is step 0 and the first
generated token is step 1. The add at that token is `coef * factor(g) * v`, with

- `constant`: factor 1 (plain steering);
- `linear:N`: `max(0, 1 - g / N)`, full strength on the prompt, fading to nothing by step N;
- `first:N`: 1 while `g < N`, then 0 (the prompt and the first N - 1 generated tokens, which
  steer the first N replies' tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pvrs.errors import InvalidArgumentError

if TYPE_CHECKING:  # torch loads on first use: the CLI parses --schedule without it
    import torch

ScheduleKind = Literal["constant", "linear", "first"]
SCHEDULE_FORMS = "constant, linear:N or first:N (N a whole number of generation steps, >= 1)"


@dataclass(frozen=True)
class Schedule:
    """`kind` and, for `linear` and `first`, its step count `steps`."""

    kind: ScheduleKind = "constant"
    steps: int = 0

    @classmethod
    def parse(cls, text: str | Schedule | None) -> Schedule:
        """`"constant"`, `"linear:N"` or `"first:N"` (None is constant); one-line error otherwise."""
        if text is None:
            return cls()
        if isinstance(text, Schedule):
            return text
        kind, sep, count = str(text).strip().partition(":")
        if kind == "constant" and not sep:
            return cls()
        if kind in ("linear", "first") and count.isdigit() and int(count) >= 1:
            return cls(kind, int(count))  # type: ignore[arg-type]
        raise InvalidArgumentError(f"schedule {text!r} is not {SCHEDULE_FORMS}")

    def __str__(self) -> str:
        return self.kind if self.kind == "constant" else f"{self.kind}:{self.steps}"

    @property
    def constant(self) -> bool:
        return self.kind == "constant"

    def factors(self, steps: torch.Tensor) -> torch.Tensor:
        """float32 factors of integer steps `g` (any shape, any device)."""
        import torch

        g = steps.to(torch.float32)
        if self.kind == "linear":
            return (1.0 - g / self.steps).clamp(min=0.0)
        if self.kind == "first":
            return (g < self.steps).to(torch.float32)
        return torch.ones_like(g)


def generation_steps(positions: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Step `g = max(0, p - (P - 1))` of each absolute position `p`, for a prompt of `P` tokens."""
    return (positions - (prompt_len - 1)).clamp(min=0)
