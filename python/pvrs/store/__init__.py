"""The local store of persona vectors and everything that reads or checks one: the on-disk
layout and manifest, atomic tensor files, the 0.6.x queries shared with the Hub store,
alignment for analysis, `pvrs validate`, importers, `--source` resolution and layer flags.

The names below are the store's public API (`from pvrs.store import PersonaVectorStore`)."""

from __future__ import annotations

from pvrs.store.dataset import AnalysisDataset, discover_activation_models, load_analysis_dataset
from pvrs.store.files import atomic_path, atomic_write_bytes
from pvrs.store.layout import (
    BASELINE_PERSONA_ID,
    DEFAULT_MASK_STRATEGY,
    FORMAT,
    FORMAT_VERSION,
    LAYER_CONVENTION,
    MANIFEST_FILENAME,
    POOLING,
    PROVENANCE_KEYS,
    SUPPORTED_VARIANTS,
    TENSOR_KEY,
    VectorNotFoundError,
    VectorRecord,
    validate_persona_id,
)
from pvrs.store.local import ActivationStore, PersonaVectorStore
from pvrs.store.manifest import manifest_text

__all__ = [
    "BASELINE_PERSONA_ID",
    "DEFAULT_MASK_STRATEGY",
    "FORMAT",
    "FORMAT_VERSION",
    "LAYER_CONVENTION",
    "MANIFEST_FILENAME",
    "POOLING",
    "PROVENANCE_KEYS",
    "SUPPORTED_VARIANTS",
    "TENSOR_KEY",
    "ActivationStore",
    "AnalysisDataset",
    "PersonaVectorStore",
    "VectorNotFoundError",
    "VectorRecord",
    "atomic_path",
    "atomic_write_bytes",
    "discover_activation_models",
    "load_analysis_dataset",
    "manifest_text",
    "validate_persona_id",
]
