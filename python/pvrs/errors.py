"""Exception hierarchy. Every error pvrs raises on purpose is a `PvrsError`; the Rust core's
errors arrive as the subclass named by `Error::python_class` in `rust/error.rs`."""

from __future__ import annotations


class PvrsError(Exception):
    """Base class of every pvrs error. The message names the input and the fix."""


class InvalidArgumentError(PvrsError, ValueError):
    """An argument breaks the documented contract (wrong shape, length, type)."""


class InputError(PvrsError, ValueError):
    """A user input (persona file, QA file, flag) is missing or malformed."""


class ModelError(PvrsError):
    """A model or tokenizer cannot be loaded or used (unknown id, no chat template, ...)."""


class EngineStartError(ModelError):
    """An engine (vLLM) cannot start the model: the whole run stops, not one persona."""


class TemplateError(PvrsError, ValueError):
    """A chat template cannot render a conversation the way pvrs needs."""


class SpanError(PvrsError, ValueError):
    """A content span cannot be located exactly in the rendered prompt or its tokens."""


class MaskError(PvrsError, ValueError):
    """A mask strategy selects no tokens or is unsupported by the template."""


class PersonaIdError(PvrsError, ValueError):
    """A persona id is not a safe file name."""


class ArtifactError(PvrsError):
    """A saved tensor file is missing, truncated, malformed or of the wrong shape."""


class ManifestError(PvrsError):
    """A manifest is malformed or disagrees with its tensors."""


class NonFiniteError(PvrsError, ValueError):
    """A vector holds NaN or Inf."""


class PackagingError(PvrsError):
    """Writing or reading a Hub-style parquet dataset failed."""


class PvrsIOError(PvrsError, OSError):
    """A file could not be read or written (the message names the path)."""


class RenderError(PvrsError):
    """A figure cannot be drawn or exported (plotly missing, no browser for PNG export)."""


class JudgeError(PvrsError):
    """A judge cannot score: its endpoint refuses, times out or replies in an unreadable way,
    or a local judge model has no number tokens. The message names the endpoint or model."""


class GenerationError(PvrsError):
    """A generator model's replies never made a valid file (`pvrs trait --describe`): the
    operation failed, not the user's input. The message says what the last reply lacked."""


class InternalError(PvrsError):
    """A bug in pvrs (for example a contained panic in the Rust core). Please report it."""


__all__ = [
    "ArtifactError",
    "EngineStartError",
    "GenerationError",
    "InputError",
    "InternalError",
    "InvalidArgumentError",
    "JudgeError",
    "ManifestError",
    "MaskError",
    "ModelError",
    "NonFiniteError",
    "PackagingError",
    "PersonaIdError",
    "PvrsError",
    "PvrsIOError",
    "RenderError",
    "SpanError",
    "TemplateError",
]
