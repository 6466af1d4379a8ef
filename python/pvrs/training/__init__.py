"""Fine-tuning with persona vectors: the activation shift a fine-tune causes along each vector
(`shift`), preventative steering and ablation on training forwards only (`prevent`), and LoRA
SFT of chat rows with trl (`sft`). peft and trl are the optional extra `pvrs[train]`;
`prevent` needs only transformers."""

from __future__ import annotations

from pvrs._lazy import lazy_getattr

_EXPORTS = {
    "activation_shift": "pvrs.training.shift",
    "load_tuned": "pvrs.training.models",
    "preventative": "pvrs.training.prevent",
    "PreventativeSteering": "pvrs.training.prevent",
    "PreventativeSteeringCallback": "pvrs.training.prevent",
    "finetune": "pvrs.training.sft",
    "TrainConfig": "pvrs.training.sft",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
