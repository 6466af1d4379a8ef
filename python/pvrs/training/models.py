"""The optional training dependencies, and a tuned model given as a full model or as a LoRA
adapter folder over the base."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.errors import InputError, ModelError
from pvrs.jsonio import read_json

if TYPE_CHECKING:
    from torch import nn

TRAIN_EXTRA = "pip install 'pvrs[train]'"
ADAPTER_CONFIG = "adapter_config.json"


def require(*packages: str, what: str) -> None:
    """One line naming the missing packages and the extra that brings them."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise InputError(f"{what} needs {' and '.join(missing)}: {TRAIN_EXTRA}")


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_tuned(tuned: str, base: nn.Module, *, dtype: str = "auto", device: str = "auto") -> nn.Module:
    """`tuned` as a model in eval mode: a LoRA adapter folder is applied to a copy of `base`
    with peft and merged (the same forward, and the blocks are plain ones again); anything else
    is loaded as a full model."""
    if not is_adapter(tuned):
        from pvrs.engines.models import load

        model, _ = load(tuned, dtype=dtype, device=device)
        return model
    require("peft", what=f"the LoRA adapter {tuned}")
    import copy

    from peft import PeftModel

    recorded = _recorded_base(Path(tuned))
    try:
        wrapped = PeftModel.from_pretrained(copy.deepcopy(base), tuned)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another model
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = next((line for line in lines if "size mismatch" in line), lines[0])
        raise ModelError(
            f"--tuned {tuned}: the adapter does not fit the base model (it was trained on "
            f"{recorded or 'an unrecorded base'}): {reason[:200]}; pass its own base with --base"
        ) from None
    return wrapped.merge_and_unload().eval()


def _recorded_base(folder: Path) -> str | None:
    config: Any = read_json(folder / ADAPTER_CONFIG, f"adapter config {folder / ADAPTER_CONFIG}")
    name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return str(name) if name else None
