"""The tensor math of every residual-stream edit, one copy for the transformers hooks
(`pvrs.steering.interventions`) and the vLLM worker (`pvrs.engines.vllm_worker`), so that both
give the same bits and so the same tokens.

`hidden` is `(..., hidden_size)` in the model's dtype. Projections are taken in fp32 so that
a bf16 model still gets an exact-enough projection; the result is cast back."""

from __future__ import annotations

from typing import Literal

import torch

from pvrs.errors import InvalidArgumentError

ProjectionKind = Literal["ablate", "mean_ablate", "cap", "floor"]
PROJECTION_KINDS: tuple[str, ...] = ("ablate", "mean_ablate", "cap", "floor")


def unit(vector: torch.Tensor, what: str = "direction") -> torch.Tensor:
    """`vector / ||vector||` in fp32; a zero vector has no direction and is an error."""
    norm = torch.linalg.vector_norm(vector.float())
    if not norm > 0:
        raise InvalidArgumentError(f"the {what} is the zero vector; it defines no direction")
    return vector.float() / norm


def add(hidden: torch.Tensor, scaled: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """`hidden + factor * scaled`: `scaled` is `alpha * v` already in `hidden`'s dtype, `factor`
    (a schedule's, `(..., 1)` in that dtype) scales it per token; None is 1."""
    return hidden + scaled if factor is None else hidden + factor * scaled


def along(hidden: torch.Tensor, v_hat: torch.Tensor, kind: str, value: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Edit the projection `p = h . v_hat` on the fp32 unit vector `v_hat`:

    - `ablate`: `h - p v_hat` (the component removed; `value` unused);
    - `mean_ablate`: `h + (value - p) v_hat` (the projection replaced by `value`);
    - `cap`: `h - max(p - value, 0) v_hat` (projections end at most `value`);
    - `floor`: `h + max(value - p, 0) v_hat` (projections end at least `value`)."""
    proj = hidden.float() @ v_hat
    if kind == "ablate":
        return (hidden.float() - proj.unsqueeze(-1) * v_hat).to(hidden.dtype)
    if kind == "mean_ablate":
        shift = value - proj
        return (hidden.float() + shift.unsqueeze(-1) * v_hat).to(hidden.dtype)
    if kind == "cap":
        excess = (proj - value).clamp(min=0.0)
        return (hidden.float() - excess.unsqueeze(-1) * v_hat).to(hidden.dtype)
    if kind == "floor":
        lift = (value - proj).clamp(min=0.0)
        return (hidden.float() + lift.unsqueeze(-1) * v_hat).to(hidden.dtype)
    raise InvalidArgumentError(f"edit kind {kind!r} is not one of {', '.join(PROJECTION_KINDS)}")
