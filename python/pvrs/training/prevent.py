"""Preventative steering (Chen et al. 2025, section 5.2): add `alpha * v` to chosen blocks'
outputs, or ablate the direction there, on training forwards only, so the optimiser need not
move the model along `v` to fit data that carries the trait. Evaluation and generation see
the plain model, and nothing is written into the weights: a saved model or adapter has no
trace of it.

Use it around any training loop (`with preventative(model, v, 15, alpha=30): trainer.train()`)
or as a `transformers.TrainerCallback` (`Trainer(..., callbacks=[PreventativeSteeringCallback(
PreventativeSteering(v, 15, alpha=30))])`), which steers from `on_train_begin` to `on_train_end`.
A forward trains when its block is in train mode and autograd is on; `generate` runs without
gradients, so it is never steered even on a model left in train mode. Gradient checkpointing
runs the hook again on recomputation, which gives the same edit (it depends on the input only).

Strength: the CPU experiment in the README moved the trait least at an `alpha * ||v||` of 0.1-0.2
times the layer's median residual norm; at 0.5-1 the model overcorrects (`suggested_alphas`
turns such a fraction into an alpha)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from torch import nn

    from pvrs.steering.residuals import VectorLike


@dataclass(frozen=True)
class PreventativeSteering:
    """One intervention: add `alpha * vector` at `layers`, or with `ablate` remove the
    component along `vector` there (`alpha` then unused)."""

    vector: VectorLike
    layers: int | Sequence[int]
    alpha: float | Mapping[int, float] = 1.0
    ablate: bool = False


@contextmanager
def preventative(model: nn.Module, *steerings: PreventativeSteering) -> Iterator[None]:
    """Each steering active on `model`'s training forwards while the block runs; all hooks are
    removed on exit, also on an exception (Ctrl-C)."""
    from pvrs.steering.interventions import ablate, steer

    with ExitStack() as stack:
        for s in steerings:
            if s.ablate:
                stack.enter_context(ablate(model, s.vector, s.layers, training_only=True))
            else:
                stack.enter_context(steer(model, s.vector, s.layers, s.alpha, training_only=True))
        yield


class PreventativeSteeringCallback(TrainerCallback):  # type: ignore[misc]
    """`preventative(model, *steerings)` from the start of `Trainer.train` to its end."""

    def __init__(self, *steerings: PreventativeSteering) -> None:
        self.steerings = steerings
        self._active: ExitStack | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("PreventativeSteeringCallback needs the trainer's model (transformers passes it)")
        self.remove()
        self._active = ExitStack()
        self._active.enter_context(preventative(model, *self.steerings))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Take the hooks off now (also what `on_train_end` does); a run stopped by an
        exception never reaches `on_train_end`, so call this, or use `preventative`."""
        if self._active is not None:
            self._active.close()
            self._active = None
