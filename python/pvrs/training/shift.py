"""The activation shift of a fine-tune along persona vectors (Chen et al. 2025, section 5):
per layer, the tuned model's mean activation minus the base model's on the same prompts,
projected on each unit vector, with the cosine between shift and vector.

Two measures, as the paper's `eval/cal_projection.py`: `prompt_last`, the activation at the
last prompt token (the assistant turn opened), averaged over prompts; `answer_mean`, each
answer's mean over its tokens, averaged over answers. The answers are the ones given with the
questions (the same tokens for both models) or, without them, each model's own greedy answer.
The prompt-last shift is the cleaner measure: the answer mean also moves with the trait words
a tuned model writes itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pvrs.errors import InputError, InvalidArgumentError

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.steering.residuals import VectorLike

MEASURES = ("prompt_last", "answer_mean")
DEFAULT_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class Question:
    question: str
    answer: str | None = None  # None: each model answers itself (greedy)


@dataclass(frozen=True)
class MeanActivations:
    """One model's mean activations: `(len(layers), H)` float64 per measure."""

    layers: list[int]
    prompt_last: np.ndarray
    answer_mean: np.ndarray


@dataclass(frozen=True)
class Shift:
    """`projection[name][measure]` and `cosine[name][measure]`: `(len(layers),)` per vector;
    `norm[measure]`: the shift's length per layer."""

    layers: list[int]
    projection: dict[str, dict[str, np.ndarray]]
    cosine: dict[str, dict[str, np.ndarray]]
    norm: dict[str, np.ndarray]


def read_questions(path: str | Path) -> list[Question]:
    """JSON/JSONL/parquet rows with `question` (or `prompt`) and an optional `answer`."""
    from pvrs.extraction.inputs import read_rows

    rows = read_rows(Path(path))
    out = []
    for i, row in enumerate(rows):
        text = row.get("question") or row.get("prompt")
        answer = row.get("answer")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"--questions {path} row {i}: needs a non-empty 'question' or 'prompt'")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise InputError(f"--questions {path} row {i}: 'answer' must be non-empty text (or left out)")
        out.append(Question(text, answer))
    if not out:
        raise InputError(f"--questions {path}: holds no rows")
    return out


def default_questions() -> list[Question]:
    from pvrs.extraction.generate import DEFAULT_PROMPTS

    return [Question(q) for q in DEFAULT_PROMPTS]


def _sequence(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, q: Question, max_new_tokens: int, index: int
) -> tuple[list[int], int]:
    """Prompt plus answer token ids, and the prompt's length (the paper's `prompt + answer`)."""
    from pvrs.extraction.generate import SamplingConfig, as_chat, generate, render

    prompt = tokenizer(render(tokenizer, as_chat(q.question)), add_special_tokens=False)["input_ids"]
    answer = q.answer
    if answer is None:
        answer = generate(model, tokenizer, as_chat(q.question), SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0))
    tokens = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
    if not tokens:
        raise InputError(f"question {index}: the model's answer is empty; give answers in --questions")
    return list(prompt) + list(tokens), len(prompt)


def mean_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    layers: Sequence[int],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> MeanActivations:
    """`model`'s prompt-last and answer-mean activations at `layers`, averaged over questions."""
    import torch

    from pvrs.steering.residuals import activations, hidden_size

    chosen = list(layers)
    last = np.zeros((len(chosen), hidden_size(model)))
    answers = np.zeros_like(last)
    for i, q in enumerate(questions):
        ids, prompt_len = _sequence(model, tokenizer, q, max_new_tokens, i)
        acts = activations(model, None, [torch.tensor(ids)], chosen)[0]
        for j, layer in enumerate(chosen):
            hidden = acts[layer].double().numpy()
            last[j] += hidden[prompt_len - 1]
            answers[j] += hidden[prompt_len:].mean(axis=0)
    return MeanActivations(chosen, last / len(questions), answers / len(questions))


def project(
    base: MeanActivations, tuned: MeanActivations, vectors: Mapping[str, Mapping[int, np.ndarray]]
) -> Shift:
    """The tuned-minus-base shift per measure and layer, projected on each unit vector
    (`vectors[name][layer]`) and its cosine with it."""
    projection: dict[str, dict[str, np.ndarray]] = {name: {} for name in vectors}
    cosine: dict[str, dict[str, np.ndarray]] = {name: {} for name in vectors}
    norm: dict[str, np.ndarray] = {}
    for measure in MEASURES:
        shift = getattr(tuned, measure) - getattr(base, measure)
        lengths = np.linalg.norm(shift, axis=1)
        norm[measure] = lengths
        for name, rows in vectors.items():
            units = np.stack([np.asarray(rows[layer], np.float64) for layer in base.layers])
            units = units / np.linalg.norm(units, axis=1, keepdims=True)
            along = np.einsum("lh,lh->l", shift, units)
            projection[name][measure] = along
            cosine[name][measure] = np.divide(along, lengths, out=np.zeros_like(along), where=lengths > 0)
    return Shift(list(base.layers), projection, cosine, norm)


def layer_units(model: nn.Module, vector: VectorLike, layers: Sequence[int], name: str) -> dict[int, np.ndarray]:
    """Each layer's row of `vector`, checked against the model (hidden size, block count), and
    refused where it is zero (no direction to project on)."""
    from pvrs.steering.residuals import layer_vectors

    rows = {layer: v.double().numpy() for layer, v in layer_vectors(model, vector, layers, f"vector {name}").items()}
    zero = [layer for layer, v in rows.items() if not np.linalg.norm(v) > 0]
    if zero:
        raise InvalidArgumentError(f"vector {name} is zero at layer(s) {zero}; it gives no direction there")
    return rows


def activation_shift(
    base: nn.Module,
    tuned: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    vectors: Mapping[str, VectorLike],
    layers: int | Sequence[int] | None = None,
    questions: Sequence[Question] | None = None,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Shift:
    """The shift of `tuned` against `base` along each named vector at `layers` (default: every
    block), over `questions` (default: pvrs's neutral prompts, answered by each model)."""
    from pvrs.engines.hooks import decoder_layers
    from pvrs.steering.residuals import resolve_layers

    chosen = resolve_layers(base, range(len(decoder_layers(base))) if layers is None else layers)
    if len(decoder_layers(tuned)) != len(decoder_layers(base)):
        raise InvalidArgumentError(
            f"the tuned model has {len(decoder_layers(tuned))} blocks, the base {len(decoder_layers(base))}; "
            "compare a fine-tune with its own base"
        )
    units = {name: layer_units(base, v, chosen, name) for name, v in vectors.items()}
    qs = list(questions) if questions is not None else default_questions()
    kwargs = {"max_new_tokens": max_new_tokens}
    return project(
        mean_activations(base, tokenizer, qs, chosen, **kwargs),
        mean_activations(tuned, tokenizer, qs, chosen, **kwargs),
        units,
    )


def rows(shift: Shift, tuned: str) -> list[dict[str, object]]:
    """The long table: one row per tuned model, vector, measure and layer."""
    return [
        {"tuned": tuned, "vector": name, "measure": measure, "layer": layer,
         "projection": float(shift.projection[name][measure][j]),
         "cosine": float(shift.cosine[name][measure][j]), "shift_norm": float(shift.norm[measure][j])}
        for name in shift.projection for measure in MEASURES for j, layer in enumerate(shift.layers)
    ]


def check_scores(n_models: int, scores: Sequence[float]) -> None:
    if n_models != len(scores) or len(scores) < 3:
        raise InputError(
            f"--scores: {len(scores)} scores for {n_models} tuned models; give one per --tuned, "
            "at least 3 to correlate"
        )
    if float(np.std(scores)) == 0.0:
        raise InputError("--scores: every score is the same; a correlation needs them to differ")


def correlations(shifts: Sequence[Shift], scores: Sequence[float]) -> list[dict[str, object]]:
    """Pearson's r across tuned models between each projection and the trait scores given
    (the paper's figure: the shift predicts the trait's expression after fine-tuning)."""
    check_scores(len(shifts), scores)
    first = shifts[0]
    out = []
    for name in first.projection:
        for measure in MEASURES:
            for j, layer in enumerate(first.layers):
                values = np.array([s.projection[name][measure][j] for s in shifts])
                r = float(np.corrcoef(values, scores)[0, 1]) if np.std(values) > 0 else float("nan")
                out.append({"vector": name, "measure": measure, "layer": layer, "pearson_r": r})
    return out


def figure(shifts: Mapping[str, Shift], name: str) -> go.Figure:
    """Projection of each tuned model's shift on vector `name`, over layers, per measure."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for tuned, shift in shifts.items():
        for measure in MEASURES:
            fig.add_trace(go.Scatter(x=shift.layers, y=shift.projection[name][measure], mode="lines+markers",
                                     name=f"{tuned} ({measure})"))
    fig.update_layout(title=f"activation shift along {name}", xaxis_title="layer",
                      yaxis_title="projection of tuned minus base on the unit vector", width=900, height=500)
    return fig
