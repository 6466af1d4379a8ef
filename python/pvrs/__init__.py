"""pvrs: persona vectors with a Rust core.

Extract per-persona mean residual-stream activations at every layer, analyse them,
steer models with them and publish them as Hugging Face datasets."""

from __future__ import annotations

from pvrs import _core, errors
from pvrs.analysis import (
    agreement,
    assistant_axis,
    layer_curves,
    nearest_neighbours,
    pca_by_layer,
    similarity_by_layer,
)
from pvrs.chat import PreparedInput, prepare_inputs, render

# The error classes, listed once in pvrs.errors.__all__ (added to ours below).
from pvrs.errors import *  # noqa: F403
from pvrs.hub import (
    HFPersonaVectorStore,
    list_hub_vector_models,
    parse_vector_config_name,
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
from pvrs.validation import ValidationReport, validate

__version__ = _core.__version__

__all__ = [
    "ActivationStore",
    "AnalysisDataset",
    "HFPersonaVectorStore",
    "PersonaVectorStore",
    "PreparedInput",
    "ValidationReport",
    "VectorNotFoundError",
    "VectorRecord",
    "__version__",
    "agreement",
    "assistant_axis",
    "discover_activation_models",
    "layer_curves",
    "list_hub_vector_models",
    "load_analysis_dataset",
    "load_probe_artifact",  # noqa: F405 (imported lazily by __getattr__)
    "nearest_neighbours",
    "parse_vector_config_name",
    "pca_by_layer",
    "prepare_inputs",
    "render",
    "similarity_by_layer",
    "validate",
]
__all__ += errors.__all__


def __getattr__(name: str) -> object:
    # Probes need scikit-learn: import them on first use, not with the package.
    if name == "load_probe_artifact":
        from pvrs.probes import load_probe_artifact

        return load_probe_artifact
    raise AttributeError(f"module 'pvrs' has no attribute {name!r}")
