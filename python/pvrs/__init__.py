"""pvrs: persona vectors with a Rust core.

Extract per-persona mean residual-stream activations at every layer, analyse them,
steer models with them and publish them as Hugging Face datasets."""

from __future__ import annotations

try:
    from pvrs import _core
except ImportError as e:  # a source tree without the compiled module (e.g. PYTHONPATH=python)
    raise ImportError(
        f"pvrs's compiled module pvrs._core is missing from {__path__[0]}; build and install "
        "it with `maturin develop --release` (or `pip install .`) and run without "
        "PYTHONPATH=python"
    ) from e
from pvrs import errors
from pvrs._lazy import lazy_getattr
from pvrs.analysis import (
    agreement,
    assistant_axis,
    layer_curves,
    nearest_neighbours,
    pca_by_layer,
    similarity_by_layer,
)

# The error classes, listed once in pvrs.errors.__all__ (added to ours below).
from pvrs.errors import *  # noqa: F403
from pvrs.extraction.chat import PreparedInput, prepare_inputs
from pvrs.extraction.template import render
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
from pvrs.store.validation import ValidationReport, validate

__version__ = _core.__version__

# Torch- and scikit-learn-heavy names load on first use, so `import pvrs` stays fast.
_LAZY = {
    "load_probe_artifact": "pvrs.analysis.probe_artifacts",
    "steer": "pvrs.steering.interventions",
    "ablate": "pvrs.steering.interventions",
    "cap": "pvrs.steering.interventions",
    "suggested_alpha": "pvrs.steering.interventions",
    "suggested_alphas": "pvrs.steering.interventions",
    "band": "pvrs.steering.interventions",
    "calibrate_tau": "pvrs.steering.residuals",
    # Minimal-pair attribute vectors (`pvrs attribute`) and persona-vectors' trait store.
    "attribute_vectors": "pvrs.extraction.attributes",
    "load_attribute_personas": "pvrs.extraction.attributes",
    "load_template": "pvrs.extraction.attributes",
    "TraitVectorStore": "pvrs.store.traits",
    "write_attribute_report": "pvrs.analysis.attributes",
}

__getattr__ = lazy_getattr(__name__, _LAZY)

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
    "nearest_neighbours",
    "parse_vector_config_name",
    "pca_by_layer",
    "prepare_inputs",
    "render",
    "similarity_by_layer",
    "validate",
    *_LAZY,
    *errors.__all__,
]
