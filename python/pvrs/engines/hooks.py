"""Finding the decoder blocks of any Hugging Face causal LM, and forward hooks on them
as context managers that always remove what they registered."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pvrs.errors import ModelError

# Attribute paths of the decoder block list, tried in order. Multimodal wrappers keep the
# text model under `language_model` (transformers v4 and v5 spell it differently).
_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma 2/3 text, Phi-3, SmolLM
    "model.language_model.layers",  # v5 multimodal wrappers (Gemma 3, Llava, ...)
    "language_model.model.layers",  # v4 multimodal wrappers
    "model.text_model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "layers",
)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ordered decoder blocks of `model`; row `i` of a persona vector is block `i`'s output."""
    if callable(getattr(model, "get_base_model", None)):  # a peft wrapper: the blocks are its base's
        model = model.get_base_model()
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ModelError(
        f"cannot find the decoder blocks of {type(model).__name__}; pvrs looks for "
        f"{', '.join(_LAYER_PATHS)}. Please report this architecture."
    )


def hidden_of(output: Any) -> torch.Tensor:
    """The residual stream in a block's output (blocks return a tensor or a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """`output` with its residual stream replaced, in the same container type."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]
ForwardPreHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any]


@contextmanager
def forward_hooks(
    modules: Sequence[nn.Module],
    hooks: Sequence[ForwardHook],
    *,
    pre_hooks: Sequence[tuple[nn.Module, ForwardPreHook]] = (),
) -> Iterator[None]:
    """Register `hooks[i]` on `modules[i]` for the duration of the block, removing every
    handle on exit, including on exceptions.

    `pre_hooks` are `(module, hook)` pairs run before the module's forward; they are
    registered with `with_kwargs=True` so they see the call's keyword arguments (the
    input ids, the KV cache), and are registered before the forward hooks."""
    handles = []
    try:
        for module, pre_hook in pre_hooks:
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        for module, hook in zip(modules, hooks, strict=True):
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
