"""pvrs: persona vectors with a Rust core.

Extract per-persona mean residual-stream activations at every layer, analyse them,
steer models with them and publish them as Hugging Face datasets."""

from __future__ import annotations

from pvrs import _core
from pvrs.errors import (
    ArtifactError,
    InputError,
    InternalError,
    InvalidArgumentError,
    ManifestError,
    MaskError,
    ModelError,
    NonFiniteError,
    PackagingError,
    PersonaIdError,
    PvrsError,
    PvrsIOError,
    SpanError,
    TemplateError,
)
from pvrs.store import (
    ActivationStore,
    AnalysisDataset,
    PersonaVectorStore,
    VectorNotFoundError,
    VectorRecord,
    discover_activation_models,
    load_analysis_dataset,
)

__version__ = _core.__version__

# Torch-heavy names load on first use, so `import pvrs` stays fast.
_LAZY = {
    "steer": "pvrs.steering",
    "ablate": "pvrs.steering",
    "cap": "pvrs.steering",
    "suggested_alpha": "pvrs.steering",
    "suggested_alphas": "pvrs.steering",
    "calibrate_tau": "pvrs.residuals",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pvrs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "ActivationStore",
    "AnalysisDataset",
    "ArtifactError",
    "InputError",
    "InternalError",
    "InvalidArgumentError",
    "ManifestError",
    "MaskError",
    "ModelError",
    "NonFiniteError",
    "PackagingError",
    "PersonaIdError",
    "PersonaVectorStore",
    "PvrsError",
    "PvrsIOError",
    "SpanError",
    "TemplateError",
    "VectorNotFoundError",
    "VectorRecord",
    "__version__",
    "ablate",
    "calibrate_tau",
    "cap",
    "discover_activation_models",
    "load_analysis_dataset",
    "steer",
    "suggested_alpha",
    "suggested_alphas",
]
