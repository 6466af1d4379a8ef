"""Inputs and extraction: personas and QA pairs (`inputs`), chat rendering and exact content
spans (`template`), tokenization and masks (`chat`), mask strategies (`masks`, with the
plain-Python `reference` of the Rust mask builder), answers generated in persona
(`generate`) and the extract driver (`driver`), which runs an engine from `pvrs.engines` and
saves into `pvrs.store`."""

from __future__ import annotations

from pvrs._lazy import lazy_getattr

_EXPORTS = {
    "extract": "pvrs.extraction.driver",
    "ExtractionResult": "pvrs.extraction.results",
    "SampleSource": "pvrs.extraction.samples",
    "Persona": "pvrs.extraction.inputs",
    "QAPair": "pvrs.extraction.inputs",
    "load_personas": "pvrs.extraction.inputs",
    "load_qa": "pvrs.extraction.inputs",
    "PreparedInput": "pvrs.extraction.chat",
    "prepare_inputs": "pvrs.extraction.chat",
    "render": "pvrs.extraction.template",
    "MaskStrategy": "pvrs.extraction.masks",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
