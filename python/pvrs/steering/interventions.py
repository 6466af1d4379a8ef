"""Interventions on the residual stream of any Hugging Face causal LM: add a vector
(`steer`), remove its component (`ablate`), replace it by its mean over calibration texts
(`mean_ablate`), or cap the projection on an axis (`cap`).

Each is a context manager over forward hooks on the decoder blocks: the hook edits block
`i`'s output, the same place row `i` of a persona vector was read. They stack (hooks run
in the order the `with` blocks were entered) and leaving the block, also by an exception,
removes every hook.

Vectors are `(hidden_size,)`, used at every chosen layer, or `(num_layers, hidden_size)`,
row `i` used at block `i`: a persona vector, or a direction from `pvrs.steering.directions`
(re-exported here: `direction`, `assistant_axis_direction`, `probe_direction`, `load_vector`).

Positions. `positions="all"` edits every token. `"prompt"` edits only the prompt's tokens
and `"generated"` only the tokens produced by `generate`; both give the same tokens with
and without the KV cache: with the cache the prompt is seen once (the prefill) and each
new token once, without it every step re-runs the whole sequence and the same positions
are edited again. The prompt is the first forward on an empty cache, or, without a cache,
the first forward whose tokens do not continue the previous prompt. `"response"` edits the
last position of every forward of a cached `generate` (the last prompt token and every
generated one, so the first answer token is steered too; persona_vectors'
`positions="response"`): positions from the prompt's last on, also without a cache.
The vLLM worker (`pvrs.engines.vllm_worker`) edits the same positions with the same math
(`pvrs.engines.edits`).

Bands and schedules. `steer` over several layers with a `{layer: alpha}` mapping is a band;
`band` gives the mapping (uniform, or in proportion to each layer's residual norm).
`schedule="linear:N"` or `"first:N"` scales the add by generation step, with the steps of
`pvrs.engines.schedule` (the vLLM worker uses the same), read by the same position logic, so
it too gives the same tokens with and without the KV cache.

Strength. `steer` adds `alpha * v` with `v` as given (a raw persona-minus-baseline
difference, like the reference tool's coefficient). `suggested_alphas` turns a relative
strength into an alpha per layer: `alpha = fraction * median_norm(layer) / ||v_layer||`,
so that `alpha * v` has `fraction` times the median residual-stream norm of ordinary
tokens at that layer (`pvrs.steering.residuals.residual_norms`, first token of each text excluded).
On SmolLM2-135M with a persona-minus-baseline direction at layers 12-18, 0.4 (the default)
gives clearly in-character but fluent replies and 0.8 breaks fluency."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from pvrs.engines import edits
from pvrs.engines.hooks import decoder_layers, forward_hooks, hidden_of, replace_hidden
from pvrs.engines.schedule import Schedule, generation_steps
from pvrs.errors import InvalidArgumentError
from pvrs.steering.directions import (
    assistant_axis_direction,
    direction,
    load_vector,
    probe_direction,
)
from pvrs.steering.residuals import (
    TextLike,
    VectorLike,
    calibrate_tau,
    calibration_projections,
    layer_vectors,
    residual_norms,
    resolve_layers,
    unit,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "POSITIONS",
    "Positions",
    "ablate",
    "assistant_axis_direction",
    "band",
    "calibrate_tau",
    "cap",
    "direction",
    "load_vector",
    "mean_ablate",
    "probe_direction",
    "steer",
    "suggested_alpha",
    "suggested_alphas",
]

Positions = Literal["all", "prompt", "generated", "response"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "response")
Transform = Callable[[torch.Tensor, int], torch.Tensor]


def _cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (a `Cache` object or the legacy tuple of tuples)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


@dataclass
class _PositionTracker:
    """Absolute position of the current forward's tokens and the prompt's length, read by a
    pre-hook on the model from its inputs and KV cache."""

    positions: str
    prompt_len: int = 0
    offset: int = 0
    armed: bool = False
    _prompt: torch.Tensor | None = field(default=None, repr=False)
    what: str = ""  # the setting that needs positions, in errors (default: `positions=...`)

    @property
    def _needs(self) -> str:
        return self.what or f"positions={self.positions!r}"

    def pre_hook(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = args[0] if args else kwargs.get("inputs_embeds")
        if tokens is None:
            raise InvalidArgumentError(f"{self._needs} needs input_ids or inputs_embeds in the call")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.offset = _cache_length(cache)
        length = tokens.shape[1]
        if self.offset == 0 and not self._continues_prompt(tokens, has_cache=cache is not None):
            self.prompt_len = length
            self._prompt = tokens.detach().clone()
        self.armed = True

    def _continues_prompt(self, tokens: torch.Tensor, *, has_cache: bool) -> bool:
        # With a cache a forward from position 0 is always a new prefill; without one,
        # `generate` re-feeds the prompt plus the tokens generated so far.
        prompt = self._prompt
        return (
            not has_cache
            and prompt is not None
            and prompt.shape[0] == tokens.shape[0]
            and tokens.shape[1] > self.prompt_len
            and prompt.device == tokens.device
            and torch.equal(tokens[:, : self.prompt_len], prompt)
        )

    def post_hook(self, _module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        self.armed = False

    def absolute(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(T,)` absolute positions of this forward's tokens."""
        if not self.armed:
            raise InvalidArgumentError(
                f"{self._needs} needs the forward to go through the model "
                "given to the intervention (not one of its sub-modules)"
            )
        return self.offset + torch.arange(hidden.shape[1], device=hidden.device)

    def steps(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(T,)` generation steps of this forward's tokens (`pvrs.engines.schedule`)."""
        return generation_steps(self.absolute(hidden), self.prompt_len)

    def mask(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(1, T, 1)` booleans: which of this forward's positions to edit."""
        absolute = self.absolute(hidden)
        if self.positions == "response":
            return (absolute >= self.prompt_len - 1).view(1, -1, 1)
        in_prompt = absolute < self.prompt_len
        chosen = in_prompt if self.positions == "prompt" else ~in_prompt
        return chosen.view(1, -1, 1)


@contextmanager
def _intervene(
    model: nn.Module,
    layers: Sequence[int],
    transform: Transform,
    positions: str,
    training_only: bool = False,
    tracker: _PositionTracker | None = None,
) -> Iterator[None]:
    """Replace block `i`'s output `h` by `transform(h, i)` at the chosen positions; with
    `training_only`, only in forwards that train (the block in train mode and autograd on), so
    evaluation and `generate` (which runs without gradients) see the plain model. A `tracker`
    given by a transform that reads positions itself (a schedule) is armed here."""
    if positions not in POSITIONS:
        raise InvalidArgumentError(
            f"positions={positions!r} is not one of {', '.join(map(repr, POSITIONS))}"
        )
    blocks = decoder_layers(model)
    masked = positions != "all"
    if tracker is None and masked:
        tracker = _PositionTracker(positions)

    def make_hook(layer: int) -> Any:
        def hook(module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            if training_only and not (module.training and torch.is_grad_enabled()):
                return None
            hidden = hidden_of(output)
            edited = transform(hidden, layer)
            if tracker is not None and masked:
                edited = torch.where(tracker.mask(hidden), edited, hidden)
            return replace_hidden(output, edited)

        return hook

    modules: list[nn.Module] = [blocks[i] for i in layers]
    hooks: list[Any] = [make_hook(i) for i in layers]
    pre_hooks: list[tuple[nn.Module, Any]] = []
    if tracker is not None:
        pre_hooks.append((model, tracker.pre_hook))
        modules.append(model)
        hooks.append(tracker.post_hook)
    with forward_hooks(modules, hooks, pre_hooks=pre_hooks):
        yield


class _OnDevice:
    """Per-layer vectors moved to the hidden state's device and dtype once, not per call."""

    def __init__(self, vectors: Mapping[int, torch.Tensor]) -> None:
        self._vectors = dict(vectors)
        self._moved: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, layer: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or like.dtype
        key = (layer, like.device, dtype)
        if key not in self._moved:
            self._moved[key] = self._vectors[layer].to(device=like.device, dtype=dtype)
        return self._moved[key]


def _per_layer(
    value: float | Mapping[int, float] | Sequence[float], layers: list[int], name: str
) -> dict[int, float]:
    """One number for every layer, a `{layer: value}` mapping, or one value per layer."""
    if isinstance(value, (int, float)):
        return dict.fromkeys(layers, float(value))
    if isinstance(value, Mapping):
        missing = [i for i in layers if i not in value]
        if missing:
            raise InvalidArgumentError(f"{name} has no value for layer(s) {missing}")
        return {i: float(value[i]) for i in layers}
    values = list(value)
    if len(values) != len(layers):
        raise InvalidArgumentError(
            f"{name} has {len(values)} values for {len(layers)} layers; give one per layer"
        )
    return {i: float(v) for i, v in zip(layers, values, strict=True)}


@contextmanager
def steer(
    model: nn.Module,
    vector: VectorLike,
    layers: int | Sequence[int],
    alpha: float | Mapping[int, float] = 1.0,
    positions: Positions = "all",
    *,
    schedule: str | Schedule | None = None,
    training_only: bool = False,
) -> Iterator[None]:
    """Add `alpha * v` to the output of each block in `layers` while the block is active
    (with `training_only`, on training forwards only: preventative steering).

    `vector` is `(hidden_size,)` or `(num_layers, hidden_size)` (row `i` at block `i`);
    `alpha` is one number or a `{layer: alpha}` mapping (as `suggested_alphas` and `band`
    return). `schedule` (`constant`, `linear:N`, `first:N`) scales the add by generation step,
    `alpha * factor(g) * v` (`pvrs.engines.schedule`). See the module docstring for
    `positions` and for choosing `alpha`."""
    plan = Schedule.parse(schedule)
    chosen = resolve_layers(model, layers)
    alphas = _per_layer(alpha, chosen, "alpha")
    scaled = {i: alphas[i] * v for i, v in layer_vectors(model, vector, chosen).items()}
    vectors = _OnDevice(scaled)
    # A schedule reads each token's step from the same tracker as `positions`.
    tracker = None if plan.constant else _PositionTracker(positions, what=f"schedule={str(plan)!r}")

    def add(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        if tracker is None:
            return edits.add(hidden, vectors.get(layer, hidden))
        factor = plan.factors(tracker.steps(hidden)).to(hidden.dtype).view(1, -1, 1)
        return edits.add(hidden, vectors.get(layer, hidden), factor)

    with _intervene(model, chosen, add, positions, training_only, tracker):
        yield


@contextmanager
def ablate(
    model: nn.Module,
    direction: VectorLike,
    layers: int | Sequence[int],
    positions: Positions = "all",
    *,
    training_only: bool = False,
) -> Iterator[None]:
    """Remove the component along `direction` from each chosen block's output:
    `h <- h - (h . v_hat) v_hat` (directional ablation; `training_only` as in `steer`)."""
    chosen = resolve_layers(model, layers)
    units = _OnDevice(
        {i: unit(v) for i, v in layer_vectors(model, direction, chosen, "direction").items()}
    )

    def remove(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return edits.along(hidden, units.get(layer, hidden, torch.float32), "ablate")

    with _intervene(model, chosen, remove, positions, training_only):
        yield


@contextmanager
def mean_ablate(
    model: nn.Module,
    direction: VectorLike,
    layers: int | Sequence[int],
    mean: float | Mapping[int, float] | Sequence[float] | None = None,
    *,
    calibration: Sequence[TextLike] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    positions: Positions = "all",
) -> Iterator[dict[int, float]]:
    """Replace the projection on `direction` by a fixed value: `h <- h + (m - h . v_hat) v_hat`.

    `mean` (a float, `{layer: m}` or one per layer) is the value; when None it is the mean
    of every token's projection over `calibration` (texts, chats or token ids, with
    `tokenizer` for text), so the direction carries what it carries on average and nothing
    specific to the input. The block yields the per-layer means in use."""
    chosen = resolve_layers(model, layers)
    if mean is None:
        if calibration is None:
            raise InvalidArgumentError(
                "mean_ablate needs mean=... or calibration=[texts] (the mean projection on the "
                "direction over those texts)"
            )
        proj = calibration_projections(model, tokenizer, direction, chosen, calibration)
        mean = {layer: float(p.double().mean()) for layer, p in proj.items()}
    means = _per_layer(mean, chosen, "mean")
    units = _OnDevice(
        {i: unit(v) for i, v in layer_vectors(model, direction, chosen, "direction").items()}
    )

    def replace(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return edits.along(hidden, units.get(layer, hidden, torch.float32), "mean_ablate", means[layer])

    with _intervene(model, chosen, replace, positions):
        yield means


def default_cap_quantile(side: str) -> float:
    """Calibration quantile of a cap's tau: only unusually high projections are clipped by
    an upper cap, only unusually low ones lifted by a floor."""
    return 0.99 if side == "upper" else 0.01


@contextmanager
def cap(
    model: nn.Module,
    axis: VectorLike,
    layers: int | Sequence[int],
    tau: float | Mapping[int, float] | Sequence[float] | None = None,
    *,
    side: Literal["upper", "lower"] = "upper",
    calibration: Sequence[TextLike] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    quantile: float | None = None,
    positions: Positions = "all",
) -> Iterator[dict[int, float]]:
    """Cap the projection of each chosen block's output on the unit axis `v_hat`.

    `side="upper"`: `h <- h - max(h . v_hat - tau, 0) v_hat`, so projections end at most
    `tau` and tokens already below are untouched. `side="lower"`:
    `h <- h + max(tau - h . v_hat, 0) v_hat`, a floor (the assistant-axis paper's
    stabilisation keeps activations from drifting away from the assistant end this way).

    `tau` is a float, a `{layer: tau}` mapping or one value per layer. When it is None it
    is calibrated with `calibrate_tau` on `calibration` (texts, chats or token ids, with
    `tokenizer` for text) at `quantile` (default 0.99 for an upper cap, 0.01 for a floor).
    The block yields the per-layer thresholds in use."""
    if side not in ("upper", "lower"):
        raise InvalidArgumentError(f"side={side!r} must be 'upper' or 'lower'")
    chosen = resolve_layers(model, layers)
    if tau is None:
        if calibration is None:
            raise InvalidArgumentError(
                "cap needs tau=... or calibration=[texts] (tau is then a quantile of the "
                "projections on the axis over those texts)"
            )
        q = quantile if quantile is not None else default_cap_quantile(side)
        tau = calibrate_tau(model, tokenizer, axis, chosen, calibration, q)
    thresholds = _per_layer(tau, chosen, "tau")
    units = _OnDevice(
        {i: unit(v, "axis") for i, v in layer_vectors(model, axis, chosen, "axis").items()}
    )
    kind = "cap" if side == "upper" else "floor"

    def clip(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return edits.along(hidden, units.get(layer, hidden, torch.float32), kind, thresholds[layer])

    with _intervene(model, chosen, clip, positions):
        yield thresholds


def suggested_alphas(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    vector: VectorLike,
    layers: int | Sequence[int],
    fraction: float = 0.4,
    inputs: Sequence[TextLike] | None = None,
) -> dict[int, float]:
    """Per layer, the alpha for which `alpha * v` has `fraction` times the median residual
    norm of ordinary tokens there: `alpha = fraction * median_norm(layer) / ||v_layer||`.

    `inputs` are the texts the median is taken over (default: a few neutral chat prompts,
    `pvrs.extraction.generate.DEFAULT_PROMPTS`, rendered with the model's chat template). Pass the
    result as `steer(..., alpha=alphas)`."""
    chosen = resolve_layers(model, layers)
    vectors = layer_vectors(model, vector, chosen)
    zero = [i for i in chosen if float(torch.linalg.vector_norm(vectors[i])) == 0.0]
    if zero:
        raise InvalidArgumentError(f"the vector is zero at layer(s) {zero}; no strength steers")
    norms = _median_norms(model, tokenizer, chosen, inputs)
    return {i: fraction * norms[i] / float(torch.linalg.vector_norm(vectors[i])) for i in chosen}


def _median_norms(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    layers: list[int],
    inputs: Sequence[TextLike] | None,
) -> dict[int, float]:
    """Median residual norm per layer over `inputs` (default: the built-in neutral prompts)."""
    from pvrs.extraction.generate import DEFAULT_PROMPTS, as_chat

    texts = list(inputs) if inputs is not None else [as_chat(p) for p in DEFAULT_PROMPTS]
    return residual_norms(model, tokenizer, texts, layers)


BandScale = Literal["uniform", "norm"]
BAND_SCALES: tuple[str, ...] = ("uniform", "norm")


def band(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    layers: int | Sequence[int],
    alpha: float,
    scale: BandScale = "uniform",
    inputs: Sequence[TextLike] | None = None,
) -> dict[int, float]:
    """Per-layer alphas of a band of layers steered together, for `steer(..., alpha=...)`:
    `alpha` at every layer (`uniform`), or `alpha * n_i / mean(n)` with `n_i` the median residual
    norm at layer `i` over `inputs` (`norm`; default inputs as in `suggested_alphas`), so the band's
    mean alpha is still `alpha` and a layer with a larger residual stream gets a larger share. A
    band of one layer is plain steering at `alpha` with either scale."""
    if scale not in BAND_SCALES:
        raise InvalidArgumentError(f"band scale {scale!r} is not one of {', '.join(BAND_SCALES)}")
    chosen = resolve_layers(model, layers)
    if scale == "uniform":
        return dict.fromkeys(chosen, float(alpha))
    norms = _median_norms(model, tokenizer, chosen, inputs)
    mean = sum(norms[i] for i in chosen) / len(chosen)
    return {i: float(alpha) * (norms[i] / mean) for i in chosen}


def suggested_alpha(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    vector: VectorLike,
    layer: int,
    fraction: float = 0.4,
    inputs: Sequence[TextLike] | None = None,
) -> float:
    """`suggested_alphas` for one layer."""
    return next(iter(suggested_alphas(model, tokenizer, vector, layer, fraction, inputs).values()))
