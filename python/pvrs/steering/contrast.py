"""Contrastive vectors from two sets of responses, as persona-steering toolkits build them:
per layer, the mean activation over the positive set's response tokens minus the same for
the negative set (each sample's masked mean first, then the mean over samples; DESIGN.md
pooling), saved as a store-format tensor file (`activations`, `(num_layers, hidden_size)`).

Input files are JSON/JSONL rows `{question, answer}` with an optional `system` prompt (the
response is `answer`; `id`/`qid` name the row)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.errors import InputError, NonFiniteError
from pvrs.extraction.inputs import read_rows
from pvrs.extraction.masks import DEFAULT_STRATEGY, MaskStrategy, parse_strategies

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.extraction.chat import PreparedInput

FORMAT = "pvrs-contrast"


@dataclass(frozen=True)
class Response:
    sample_id: str
    question: str
    answer: str
    system: str | None = None


def load_responses(path: str | Path) -> list[Response]:
    """Rows `{question, answer, system?, id?}` from a JSONL, JSON or parquet file."""
    path = Path(path)
    rows = read_rows(path)
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path}: expected a non-empty list of {{question, answer}} rows")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("question", "answer")
        ):
            raise InputError(f"{path}: row {i} needs string 'question' and 'answer' fields")
        system = row.get("system") or None
        if system is not None and not isinstance(system, str):
            raise InputError(f"{path}: row {i} has a non-string 'system'")
        sample_id = str(row.get("id", row.get("qid", f"{path.stem}-{i}")))
        out.append(Response(sample_id, row["question"], row["answer"], system))
    return out


def prepare_responses(
    tokenizer: PreTrainedTokenizerBase, responses: Sequence[Response], strategies: Sequence[MaskStrategy]
) -> list[PreparedInput]:
    """`responses` rendered, tokenized and masked for `strategies`, grouped by system prompt
    (one template render per group); the order within a group is kept."""
    from pvrs.extraction.chat import prepare_inputs

    groups: dict[str | None, list[Response]] = defaultdict(list)
    for r in responses:
        groups[r.system].append(r)
    return [
        prepared
        for system, group in groups.items()
        for prepared in prepare_inputs(
            tokenizer, [(r.sample_id, r.question, r.answer) for r in group], system_prompt=system, strategies=strategies
        )
    ]


def mean_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    responses: Sequence[Response],
    mask_strategy: MaskStrategy | str = DEFAULT_STRATEGY,
    layers: Sequence[int] | None = None,
) -> np.ndarray:
    """Mean over `responses` of each one's masked mean activation (`(num_layers, H)`, or
    `(len(layers), H)`)."""
    from pvrs.engines.transformers import extract_activations

    (strategy,) = parse_strategies(mask_strategy)
    prepared = prepare_responses(tokenizer, responses, [strategy])
    return extract_activations(model, [p.input_ids for p in prepared], [p.token_masks[strategy] for p in prepared], layers=layers)


def contrast_vector(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[Response],
    negative: Sequence[Response],
    mask_strategy: MaskStrategy | str = DEFAULT_STRATEGY,
) -> np.ndarray:
    """`mean_activations(positive) - mean_activations(negative)`, `(num_layers, H)` float32."""
    pos = mean_activations(model, tokenizer, positive, mask_strategy).astype(np.float64)
    neg = mean_activations(model, tokenizer, negative, mask_strategy)
    diff = (pos - neg).astype(np.float32)
    if not np.isfinite(diff).all():
        raise NonFiniteError("the contrast vector holds NaN or Inf; check the model's dtype")
    return diff


def save_vector(path: str | Path, vector: np.ndarray, metadata: dict[str, Any]) -> Path:
    """Write `vector` as the store's tensor file format (one tensor `activations`), atomically."""
    from safetensors.numpy import save

    from pvrs.store import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write_bytes(path, save({"activations": np.ascontiguousarray(vector, np.float32)}, meta))
    return path
