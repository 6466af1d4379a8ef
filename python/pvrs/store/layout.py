"""What the local store looks like on disk: file and folder names, the manifest's format and
provenance keys, and the rule that makes a persona id a safe file name (DESIGN.md)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pvrs.errors import ArtifactError, InvalidArgumentError, PersonaIdError

MANIFEST_FILENAME = "manifest.json"
LOCK_FILENAME = ".manifest.lock"
TENSOR_KEY = "activations"
TENSOR_SUFFIX = ".safetensors"
SAMPLES_DIRNAME = "samples"
BASELINE_PERSONA_ID = "baseline_assistant"
SUPPORTED_VARIANTS: tuple[str, ...] = ("templated", "biography")
DEFAULT_MASK_STRATEGY = "answer_mean"

FORMAT = "pvrs.persona_vectors"
FORMAT_VERSION = 1
# Row i is the output of decoder block i; no embedding row (DESIGN.md "Layer convention").
LAYER_CONVENTION = "decoder_block_outputs"
# Per sample the mean over its selected tokens, per persona the mean of those sample means.
POOLING = "mean_of_sample_means"
PROVENANCE_KEYS: tuple[str, ...] = (
    "model",
    "revision",
    "dtype",
    "mask_strategy",
    "variant",
    "layer_convention",
    "pooling",
    "chat_template_sha256",
    "pvrs_version",
    "engine",
    "engine_version",
)
# Provenance that may legitimately change between runs adding to the same folder.
_MUTABLE_PROVENANCE = frozenset({"pvrs_version", "engine_version"})
# What computed the vectors; a folder written before engines were recorded is the transformers
# engine's (vLLM's vectors agree only to a tolerance, so one folder never mixes them).
DEFAULT_ENGINE = "transformers"
MAX_PERSONA_ID_BYTES = 200
LOCK_TIMEOUT_S = 600.0


class VectorNotFoundError(ArtifactError, FileNotFoundError):
    """No vector is saved for the requested persona/variant (a `FileNotFoundError`, as in 0.6.x)."""


# Invisible characters that reorder or hide text (bidi controls such as U+202E, zero-width
# spaces, the BOM): a file name holding one can show as another persona's. ZWJ and ZWNJ stay
# allowed (emoji sequences, several scripts). The same list as `INVISIBLE` in rust/manifest/model.rs.
INVISIBLE = (
    ("\u00ad", "\u00ad"), ("\u061c", "\u061c"), ("\u180e", "\u180e"), ("\u200b", "\u200b"), ("\u200e", "\u200f"),
    ("\u202a", "\u202e"), ("\u2060", "\u206f"), ("\ufeff", "\ufeff"), ("\ufff9", "\ufffb"),
)


def validate_persona_id(persona_id: object) -> str:
    """Return `persona_id` if it is a safe file name, else raise `PersonaIdError`.

    Safe: a non-empty string, not `.`, no path separators, no `..`, no control or
    invisible (`INVISIBLE`) characters, no leading or trailing whitespace, at most 200
    bytes of UTF-8. `rust/manifest/model.rs` applies the same rules."""
    if not isinstance(persona_id, str):
        raise PersonaIdError(
            f"persona id {persona_id!r} must be a string, not {type(persona_id).__name__}"
        )
    if not persona_id:
        raise PersonaIdError("persona id is empty; give every persona a non-empty id")
    problem = None
    if "/" in persona_id or "\\" in persona_id:
        problem = "contains a path separator"
    elif persona_id == "." or ".." in persona_id:
        problem = "is '.' or contains '..'"
    elif any(unicodedata.category(ch) == "Cc" for ch in persona_id):
        problem = "contains a control character"
    elif hidden := [ch for ch in persona_id if any(lo <= ch <= hi for lo, hi in INVISIBLE)]:
        problem = f"contains the invisible character U+{ord(hidden[0]):04X}"
    elif persona_id != persona_id.strip():
        problem = "starts or ends with whitespace"
    else:
        try:
            size = len(persona_id.encode("utf-8"))
        except UnicodeEncodeError:
            problem = "is not valid UTF-8 (lone surrogate)"
        else:
            if size > MAX_PERSONA_ID_BYTES:
                problem = f"is {size} bytes long (at most {MAX_PERSONA_ID_BYTES} in UTF-8)"
    if problem:
        raise PersonaIdError(
            f"persona id {persona_id!r} {problem}; persona ids are file names: "
            "use letters, digits, '_', '-' or '.'"
        )
    return persona_id


def strategy_name(mask_strategy: object | None) -> str:
    """Folder name of a mask strategy (accepts `MaskStrategy` members and plain strings)."""
    if mask_strategy is None:
        return DEFAULT_MASK_STRATEGY
    return str(getattr(mask_strategy, "value", mask_strategy))


def folder_name(name: str, what: str) -> str:
    """`name` if it can be one folder inside the store (no separators, no `..`, no leading
    dot, which packaging skips as hidden)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise InvalidArgumentError(
            f"{what} {name!r} cannot name a folder in the store; use letters, digits, '_' or '-'"
        )
    return name



@dataclass(frozen=True)
class VectorRecord:
    """One persona's vector for `PersonaVectorStore.save_many`."""

    persona_id: str
    activations: Any
    name: str
    sample_ids: Sequence[str]
    n_tokens: int | None = None
    # Digest of what the vector was computed from (prompt, questions, answers): lets a
    # resumed run tell "same ids, same samples" from "same ids, edited samples".
    samples_sha256: str | None = None
