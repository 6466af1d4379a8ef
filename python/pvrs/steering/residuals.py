"""Reading the residual stream at chosen layers: which layers a user means, the per-layer
vectors an intervention uses, and per-token activations of a few texts (for calibrating a
cap threshold, the typical residual norm, or monitoring a conversation)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pvrs.engines.edits import unit
from pvrs.engines.hooks import decoder_layers, forward_hooks, hidden_of
from pvrs.engines.transformers import resolve_layers as engine_resolve_layers
from pvrs.errors import InvalidArgumentError, NonFiniteError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = Mapping[str, str]
# A calibration or monitoring input: raw text (tokenized with the tokenizer's defaults), a
# chat (a list of {role, content} rendered with the chat template), or token ids.
TextLike = str | Sequence[Message] | Sequence[int] | torch.Tensor
VectorLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]


def hidden_size(model: nn.Module) -> int:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.hidden_size)


def resolve_layers(model: nn.Module, layers: int | Sequence[int]) -> list[int]:
    """Sorted non-negative block indices (negative ones count from the end); one int is
    one layer. Out of range is an error naming the valid range."""
    if isinstance(layers, bool) or not isinstance(layers, (int, np.integer, Sequence)):
        raise InvalidArgumentError(f"layers={layers!r}: pass a block index or a list of them")
    chosen = [int(layers)] if isinstance(layers, (int, np.integer)) else list(layers)
    if not chosen:
        raise InvalidArgumentError("layers is empty; pass at least one decoder block index")
    return engine_resolve_layers(model, chosen)


def as_tensor(vector: VectorLike, what: str = "vector") -> torch.Tensor:
    """A float32 CPU tensor copy of `vector`, rejecting NaN/Inf."""
    if isinstance(vector, torch.Tensor):
        tensor = vector.detach().to(device="cpu", dtype=torch.float32).clone()
    else:
        tensor = torch.as_tensor(np.asarray(vector, dtype=np.float32)).clone()
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"the {what} holds NaN or Inf values; recompute or clean it")
    return tensor


def layer_vectors(
    model: nn.Module, vector: VectorLike, layers: Sequence[int], what: str = "vector"
) -> dict[int, torch.Tensor]:
    """The vector each chosen layer uses: a `(hidden_size,)` vector is shared by every
    layer, row `i` of a `(num_layers, hidden_size)` one is used at block `i`. Fewer rows are
    accepted when they cover the chosen layers: a llama.cpp control vector read back from
    GGUF ends at the last block it steers."""
    tensor = as_tensor(vector, what)
    size = hidden_size(model)
    num_layers = len(decoder_layers(model))
    if tensor.ndim == 1 and tensor.shape[0] == size:
        return {layer: tensor for layer in layers}
    rows = tensor.shape[0] if tensor.ndim == 2 else 0
    if tensor.ndim == 2 and tensor.shape[1] == size and max(layers) < rows <= num_layers:
        return {layer: tensor[layer] for layer in layers}
    raise InvalidArgumentError(
        f"the {what} has shape {tuple(tensor.shape)}; this model needs ({size},) for one "
        f"layer or ({num_layers}, {size}) with one row per decoder block"
    )


def encode(tokenizer: PreTrainedTokenizerBase | None, item: TextLike) -> torch.Tensor:
    """Token ids `(1, T)` of one input: ids pass through, a chat is rendered with the
    template (whose special tokens are already in the text), a string is tokenized."""
    if isinstance(item, torch.Tensor):
        ids = item.reshape(1, -1).long()
    elif isinstance(item, str) or (
        isinstance(item, Sequence) and len(item) > 0 and isinstance(item[0], Mapping)
    ):
        if tokenizer is None:
            raise InvalidArgumentError("text inputs need a tokenizer; pass tokenizer=...")
        if isinstance(item, str):
            ids = tokenizer(item, return_tensors="pt")["input_ids"]
        else:
            from pvrs.extraction.template import require_chat_template

            require_chat_template(tokenizer)
            text = tokenizer.apply_chat_template(list(item), tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = torch.tensor([list(item)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise InvalidArgumentError("an input encodes to zero tokens; drop it or give text")
    return ids


@contextmanager
def capture(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Collect each forward's output of the chosen blocks (detached, float32, on CPU) into
    `captured[layer]`, one `(batch, T, H)` tensor per forward."""
    blocks = decoder_layers(model)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def make_hook(layer: int) -> Any:
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            captured[layer].append(hidden_of(output).detach().to("cpu", torch.float32))

        return hook

    with forward_hooks([blocks[i] for i in layers], [make_hook(i) for i in layers]):
        yield captured


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    inputs: Sequence[TextLike],
    layers: Sequence[int],
) -> list[dict[int, torch.Tensor]]:
    """Per input, the `(T, H)` block outputs at each chosen layer (one unpadded forward per
    input, so no padding token ever enters a statistic)."""
    if len(inputs) == 0:
        raise InvalidArgumentError("no inputs given; pass at least one text, chat or id list")
    device = _device(model)
    out = []
    with capture(model, layers) as captured:
        for item in inputs:
            model(input_ids=encode(tokenizer, item).to(device), use_cache=False)
            out.append({layer: captured[layer].pop()[0] for layer in layers})
    return out


def projections(
    acts: Sequence[Mapping[int, torch.Tensor]], directions: Mapping[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """All tokens' projections on each layer's unit direction, concatenated over inputs."""
    return {
        layer: torch.cat([a[layer] @ unit(direction) for a in acts])
        for layer, direction in directions.items()
    }


def calibrate_tau(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    axis: VectorLike,
    layers: int | Sequence[int],
    inputs: Sequence[TextLike],
    quantile: float = 0.99,
) -> dict[int, float]:
    """Per layer, the `quantile` of every token's projection `h . v_hat` on the axis over
    the calibration `inputs` (texts, chats or token ids): the threshold `cap` uses when no
    `tau` is given. Typical use: inputs where the model behaves as wanted, quantile 0.99
    for an upper cap (only unusually high projections get clipped), a low quantile for a
    floor (`side="lower"`; the assistant-axis paper floors at the 25th percentile)."""
    if not 0.0 <= quantile <= 1.0:
        raise InvalidArgumentError(f"quantile must lie in [0, 1], got {quantile}")
    proj = calibration_projections(model, tokenizer, axis, layers, inputs)
    return {layer: float(torch.quantile(p.double(), quantile)) for layer, p in proj.items()}


def calibration_projections(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    axis: VectorLike,
    layers: int | Sequence[int],
    inputs: Sequence[TextLike],
) -> dict[int, torch.Tensor]:
    """Per layer, every token's projection `h . v_hat` on the axis over `inputs`."""
    chosen = resolve_layers(model, layers)
    directions = layer_vectors(model, axis, chosen, "axis")
    return projections(activations(model, tokenizer, inputs, chosen), directions)


def residual_norms(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    inputs: Sequence[TextLike],
    layers: int | Sequence[int],
) -> dict[int, float]:
    """Per layer, the median L2 norm of the residual stream over all tokens of `inputs`
    except each input's first token (the attention-sink token, whose norm is often tens
    of times larger and would say nothing about ordinary tokens)."""
    chosen = resolve_layers(model, layers)
    acts = activations(model, tokenizer, inputs, chosen)
    norms: dict[int, float] = {}
    for layer in chosen:
        rows = [a[layer][1:] if a[layer].shape[0] > 1 else a[layer] for a in acts]
        norms[layer] = float(torch.linalg.vector_norm(torch.cat(rows), dim=-1).median())
    return norms


OVERPOWERING = 100.0  # `alpha * v` this many times the typical residual norm leaves nothing of the model's own state


def warn_overpowering(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    vector: VectorLike,
    alphas: Sequence[Mapping[int, float]],
    inputs: Sequence[TextLike] | None = None,
) -> float:
    """Warn once when some `alpha * v` (`alphas`: `{layer: alpha}` mappings, as `steer`
    takes) is over `OVERPOWERING` times the median residual norm at its layer
    (`residual_norms` over `inputs`, default a few neutral chat prompts): the steered state
    is then the vector alone, and replies come out empty or as noise. Returns the largest ratio."""
    import warnings

    from pvrs.extraction.generate import DEFAULT_PROMPTS, as_chat

    chosen = sorted({i for alpha in alphas for i in alpha})
    if not chosen:
        return 0.0
    sizes = {i: float(torch.linalg.vector_norm(v)) for i, v in layer_vectors(model, vector, chosen).items()}
    texts = list(inputs) if inputs is not None else [as_chat(p) for p in DEFAULT_PROMPTS]
    norms = residual_norms(model, tokenizer, texts, chosen)
    worst, where = 0.0, ""
    for alpha in alphas:
        for i, a in alpha.items():
            ratio = abs(a) * sizes[i] / max(norms[i], torch.finfo(torch.float32).tiny)
            if ratio > worst:
                worst, where = ratio, f"alpha {a:g} at layer {i}"
    if worst > OVERPOWERING:
        warnings.warn(
            f"{where} adds {worst:.3g} times the typical residual norm there (over {OVERPOWERING:g}x): the "
            "model's own state is swamped, so replies come out empty or as noise; lower the alpha, or read it as "
            "a fraction of that norm (pvrs steer --relative, or suggested_alphas; 0.4 is a good start)",
            stacklevel=2,
        )
    return worst
