"""pvrs: persona vectors with a Rust core.

Extract per-persona mean residual-stream activations at every layer, analyse them,
steer models with them and publish them as Hugging Face datasets."""

from __future__ import annotations

from pvrs import _core
from pvrs.chat import PreparedInput, prepare_inputs, render
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
    "discover_activation_models",
    "load_analysis_dataset",
]

# ---- spans ----
__all__ += ["PreparedInput", "prepare_inputs", "render"]
