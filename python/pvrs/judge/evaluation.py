"""`pvrs eval`: does a direction steer? For each cell of a layers x alphas grid, the model
answers held-out questions with the direction added at one layer (or, in a caps x taus
grid, its projection on the direction capped at tau over a set of layers); a judge scores every
answer for the trait and for coherence. The unsteered model and, optionally, the model
told the trait in a system prompt are the baselines. Each cell is saved as it finishes
(keyed by everything that decided it), so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.jsonio import read_json
from pvrs.judge import Answer, Judge, ScoreCache, judge_answers
from pvrs.judge.numbers import DEFAULT_MODE
from pvrs.judge.rubrics import Rubric

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pvrs.extraction.generate import SamplingConfig
    from pvrs.steering.interventions import Positions

DEFAULT_MIN_COHERENCE = 50.0  # persona_vectors' cut-off for a usable steered answer
CAP_KINDS = ("capped", "floored")  # an upper cap, a lower one (a floor)


@dataclass(frozen=True)
class Cell:
    """One setting: `kind` is `steered`, `unsteered`, `prompted`, or `capped` / `floored` (an
    upper / lower cap); `alpha` is the strength as given (a fraction of the residual norm with
    `relative`), `strength` the one added; `cap` names the layers capped together (`10+11`)
    and `tau` the threshold on the projection onto the unit direction. A steered cell is at one
    `layer`, or over a `band` of layers steered together (`10+11+12`) with `strengths` the
    alphas added there, one per layer."""

    kind: str
    layer: int | None = None
    alpha: float | None = None
    strength: float | None = None
    cap: str | None = None
    tau: float | None = None
    band: str | None = None
    strengths: tuple[float, ...] | None = None

    @classmethod
    def from_record(cls, fields: dict[str, Any]) -> Cell:
        """A cell read back from its JSON record (where `strengths` is a list)."""
        strengths = fields.get("strengths")
        return cls(**{**fields, "strengths": None if strengths is None else tuple(strengths)})

    @property
    def slug(self) -> str:
        if self.kind in CAP_KINDS:
            return f"{self.kind}{self.cap}_tau{self.tau:g}"
        if self.kind == "steered" and self.band is not None:
            return f"band{self.band}_alpha{self.alpha:g}"
        return self.kind if self.kind != "steered" else f"layer{self.layer}_alpha{self.alpha:g}"

    @property
    def where(self) -> str:
        """`layer 3` or `band 10+11+12` (a steered cell)."""
        return f"layer {self.layer}" if self.band is None else f"band {self.band}"

    @property
    def cap_layers(self) -> list[int]:
        return _layers(self.cap)

    def steering(self) -> tuple[list[int], dict[int, float]]:
        """A steered cell's layers and the alpha added at each."""
        if self.band is not None:
            assert self.strengths is not None
            layers = _layers(self.band)
            return layers, dict(zip(layers, self.strengths, strict=True))
        assert self.layer is not None and self.strength is not None
        return [self.layer], {self.layer: self.strength}


def _layers(joined: str | None) -> list[int]:
    return [int(i) for i in (joined or "").split("+") if i]


@dataclass(frozen=True)
class CellResult:
    """A cell's answers and their scores (None: the judge gave none, a `REFUSAL` or no
    number); `trait` and `coherence` are means over the scored answers only, NaN when none is."""

    cell: Cell
    answers: list[str]
    trait_scores: list[float | None]
    coherence_scores: list[float | None]

    @property
    def trait(self) -> float:
        return _scored_mean(self.trait_scores)

    @property
    def coherence(self) -> float:
        return _scored_mean(self.coherence_scores)

    @property
    def unscored(self) -> tuple[int, int]:
        """How many answers have no trait score, and no coherence score."""
        return self.trait_scores.count(None), self.coherence_scores.count(None)


def _scored_mean(scores: Sequence[float | None]) -> float:
    scored = [s for s in scores if s is not None]
    return float(np.mean(scored)) if scored else math.nan


@dataclass(frozen=True)
class EvalSetup:
    """What every cell shares; `fingerprint` keys saved cells to it."""

    questions: Sequence[str]
    trait: str
    trait_rubric: Rubric
    coherence_rubric: Rubric
    sampling: SamplingConfig
    system_prompt: str | None = None  # the prompted baseline; None: no such baseline
    positions: Positions = "all"
    schedule: str = "constant"  # of steered cells (`pvrs.engines.schedule`)
    engine: str | None = None  # what answers when not transformers ("vllm 0.32.0"): its answers differ

    def fingerprint(self, model_name: str, vector: np.ndarray, judge_id: str) -> str:
        content = [
            model_name, hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest(),
            judge_id, list(self.questions), self.trait, self.trait_rubric.text, self.coherence_rubric.text,
            asdict(self.sampling), self.system_prompt, self.positions,
        ]
        if self.schedule != "constant":  # constant keeps the cells saved before schedules
            content.append(f"schedule {self.schedule}")
        # Modes other than 0-100 are other scores; 0-100 keeps the cells saved before modes.
        content += [f"{what} {r.scoring}" for what, r in (("trait", self.trait_rubric), ("coherence", self.coherence_rubric))
                    if r.scoring != DEFAULT_MODE]
        if self.engine is not None:  # keys of transformers cells saved before engines existed stay valid
            content.append(self.engine)
        return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()

    def system_of(self, cell: Cell) -> str | None:
        """The system prompt a cell's answers are given under (only the prompted baseline has one)."""
        return self.system_prompt if cell.kind == "prompted" else None


# The name under which an eval's direction is registered in an engine that steers by spec.
DIRECTION = "direction"


def cell_spec(cell: Cell, positions: str, schedule: str = "constant") -> list[dict[str, Any]] | None:
    """The steering spec (`pvrs.engines.vllm_steering`) of a cell's intervention on the
    registered `DIRECTION`: what `_answers` does with transformers hooks; None: unsteered."""
    if cell.kind == "steered":
        layers, alphas = cell.steering()
        scheduled = {} if schedule == "constant" else {"schedule": schedule}
        return [{"kind": "add", "vector": DIRECTION, "layers": layers, "coef": [alphas[i] for i in layers],
                 "positions": positions, **scheduled}]
    if cell.kind in CAP_KINDS:
        assert cell.tau is not None
        layers = cell.cap_layers
        return [{"kind": "cap" if cell.kind == "capped" else "floor", "vector": DIRECTION, "layers": layers,
                 "coef": [cell.tau] * len(layers), "positions": positions}]
    return None


# One request to an engine that answers a batch: (system prompt, question, steering spec).
Request = tuple[str | None, str, list[dict[str, Any]] | None]
# Answers every request at once, in order: an engine that runs a whole grid as one batch
# (vLLM). Without one, each cell runs on transformers hooks.
BatchAnswerer = Callable[[Sequence[Request]], list[str]]


def grid(
    layers: Sequence[int], alphas: Sequence[float], strengths: dict[int, float] | None, prompted: bool,
    bands: Sequence[Mapping[int, float]] = (),
) -> list[Cell]:
    """The baselines, then every (layer, alpha), then every (band, alpha); `strengths[layer]`
    scales a relative alpha, and each band maps its layers to the factor of alpha added there."""
    cells = [Cell("unsteered")] + ([Cell("prompted")] if prompted else [])
    for layer in layers:
        for alpha in alphas:
            unit = 1.0 if strengths is None else strengths[layer]
            cells.append(Cell("steered", layer, alpha, alpha * unit))
    for units in bands:
        for alpha in alphas:
            cells.append(Cell("steered", alpha=alpha, band="+".join(map(str, units)),
                              strengths=tuple(alpha * u for u in units.values())))
    return cells


def cap_grid(caps: Sequence[Sequence[int]], taus: Sequence[float], side: str) -> list[Cell]:
    """Every (cap, tau): `caps` are sets of layers capped together, `side` `upper` or `lower`."""
    kind = "capped" if side == "upper" else "floored"
    return [Cell(kind, cap="+".join(map(str, layers)), tau=tau) for layers in caps for tau in taus]


def run_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vector: np.ndarray,
    cells: Sequence[Cell],
    setup: EvalSetup,
    judge: Judge,
    out_dir: Path,
    *,
    model_name: str,
    cache: ScoreCache | None = None,
    on_cell: Callable[[CellResult, bool], object] | None = None,
    batch: BatchAnswerer | None = None,
) -> list[CellResult]:
    """Every cell's answers and scores; a cell saved under `out_dir/cells` for the same
    fingerprint is read back instead of run. `on_cell(result, resumed)` hears each. With
    `batch`, the unsaved cells are answered by it in one call (`model` is then unused)."""
    from pvrs.store import atomic_write_bytes

    key = setup.fingerprint(model_name, vector, judge.id)
    paths = [out_dir / "cells" / f"{cell.slug}.json" for cell in cells]
    saved = [_saved(path, key, cell) for path, cell in zip(paths, cells, strict=True)]
    batched: dict[Cell, list[str]] = {}
    if batch is not None:
        # Every unsaved cell's answers in one batch, before any is judged (and before a local
        # judge starts on the device the engine frees).
        todo = [cell for cell, result in zip(cells, saved, strict=True) if result is None]
        n = len(setup.questions)
        answers = batch([(setup.system_of(c), q, cell_spec(c, setup.positions, setup.schedule)) for c in todo for q in setup.questions]) if todo else []
        batched = {c: answers[i * n : (i + 1) * n] for i, c in enumerate(todo)}
    results = []
    for cell, path, result in zip(cells, paths, saved, strict=True):
        resumed = result is not None
        if result is None:
            answers = batched[cell] if batch is not None else _answers(model, tokenizer, vector, cell, setup)
            result = CellResult(cell, answers, *_scores(judge, setup, answers, cache))
            record = {"key": key, "cell": asdict(cell), "engine": setup.engine or "transformers",
                      "questions": list(setup.questions), "answers": answers,
                      "trait_scores": result.trait_scores, "coherence_scores": result.coherence_scores}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(record, indent=1, ensure_ascii=False).encode())
        results.append(result)
        if on_cell is not None:
            on_cell(result, resumed)
    return results


def _saved(path: Path, key: str, cell: Cell) -> CellResult | None:
    try:
        record = read_json(path)
        if record["key"] != key or Cell.from_record(record["cell"]) != cell:
            return None
        return CellResult(cell, record["answers"], record["trait_scores"], record["coherence_scores"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, torn or from other settings: run the cell again


def _answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, vector: np.ndarray, cell: Cell, setup: EvalSetup
) -> list[str]:
    from pvrs.extraction.generate import generate, prompt_messages
    from pvrs.steering.interventions import cap, steer

    system = setup.system_of(cell)
    context: AbstractContextManager[Any] = nullcontext()
    if cell.kind == "steered":
        layers, alphas = cell.steering()
        context = steer(model, vector, layers, alpha=alphas, positions=setup.positions, schedule=setup.schedule)
    elif cell.kind in CAP_KINDS:
        assert cell.tau is not None
        context = cap(model, vector, cell.cap_layers, tau=cell.tau, side="upper" if cell.kind == "capped" else "lower",
                      positions=setup.positions)
    with context:
        return [generate(model, tokenizer, prompt_messages(tokenizer, system, q), setup.sampling) for q in setup.questions]


def _scores(
    judge: Judge, setup: EvalSetup, answers: list[str], cache: ScoreCache | None
) -> tuple[list[float | None], list[float | None]]:
    items = [Answer("eval", str(i), q, a, setup.trait) for i, (q, a) in enumerate(zip(setup.questions, answers, strict=True))]
    return (judge_answers(judge, setup.trait_rubric, items, cache), judge_answers(judge, setup.coherence_rubric, items, cache))


def recommend(results: Sequence[CellResult], min_coherence: float) -> CellResult | None:
    """The steered cell with the highest trait score among those whose coherence is at least
    `min_coherence` (ties: the smaller alpha, then the earlier layer); None when none is."""
    usable = [r for r in results if r.cell.kind == "steered" and _usable(r, min_coherence)]
    return max(usable, key=lambda r: (r.trait, -abs(r.cell.alpha or 0.0), -(r.cell.layer or 0)), default=None)


def recommend_cap(results: Sequence[CellResult], min_coherence: float) -> CellResult | None:
    """The capped cell that moves the trait furthest at coherence >= `min_coherence`: the
    lowest trait under an upper cap (it limits the trait), the highest under a floor; ties go
    to the earlier cell. None when no capped cell is usable."""
    usable = [r for r in results if r.cell.kind in CAP_KINDS and _usable(r, min_coherence)]
    return min(usable, key=lambda r: r.trait if r.cell.kind == "capped" else -r.trait, default=None)


def _usable(result: CellResult, min_coherence: float) -> bool:
    """Coherent enough, with a trait score (a cell whose answers were all unscored has none)."""
    return result.coherence >= min_coherence and not math.isnan(result.trait)
