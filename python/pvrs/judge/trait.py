"""Trait vectors end to end (`pvrs trait`), after Anthropic's persona_vectors pipeline: answer
a trait file's questions under each positive and negative system prompt, judge every answer
for the trait (the file's own rubric) and for coherence, keep the (positive, negative) pairs
past the thresholds, and take the difference of their mean activations three ways.

A trait file is the persona_vectors format (`data_generation/trait_data_extract/<trait>.json`):
`{"instruction": [{"pos": ..., "neg": ...}, ...], "questions": [...], "eval_prompt": ...}`,
the rubric with `{question}` and `{answer}` placeholders. pvrs reads three optional keys
beside them: `judge_mode` (or `eval_type`: how the rubric is scored), `eval_questions`
(held-out questions, e.g. those `pvrs trait --describe` writes) and `name`."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.errors import InputError, NonFiniteError
from pvrs.extraction.inputs import Persona, QAPair
from pvrs.jsonio import read_json
from pvrs.judge.rubrics import Rubric, stated_mode

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.extraction.generate import SamplingConfig
    from pvrs.steering.contrast import Response

SIDES = ("pos", "neg")
NEGATIVE_NAME = "helpful"  # persona_vectors' assistant name under the negative instructions
# persona_vectors' generate_vec: pos trait >= 50, neg trait < 100 - 50, both coherences >= 50.
DEFAULT_THRESHOLD = 50.0
# The vectors generate_vec saves (response_avg_diff, prompt_avg_diff, prompt_last_diff).
VECTOR_KINDS = ("response_mean", "prompt_mean", "prompt_last")


@dataclass(frozen=True)
class TraitFile:
    name: str
    instructions: list[tuple[str, str]]  # (positive, negative) system-prompt instructions
    questions: list[str]
    eval_prompt: str
    mode: str | None = None  # the rubric's judge mode; None: 0-100
    eval_questions: list[str] | None = None  # held out from `questions`

    @property
    def rubric(self) -> Rubric:
        return Rubric(self.name, self.eval_prompt, self.mode)

    def system_prompt(self, side: str, k: int) -> str:
        """persona_vectors' system prompt: "You are a/an <name> assistant. <instruction>"."""
        name = self.name if side == "pos" else NEGATIVE_NAME
        article = "an" if name[:1].lower() in "aeiou" else "a"
        return f"You are {article} {name} assistant. {self.instructions[k][SIDES.index(side)]}"

    def personas(self) -> list[Persona]:
        """One persona per (side, instruction): `pos_0`, `neg_0`, `pos_1`, ..."""
        return [Persona(f"{side}_{k}", f"{side}_{k}", self.system_prompt(side, k))
                for k in range(len(self.instructions)) for side in SIDES]

    def samples(self, per_question: int) -> list[QAPair]:
        """Each question `per_question` times (`q3_s1`: question 3, sample 1)."""
        return [QAPair(f"q{i}_s{j}", q, "") for i, q in enumerate(self.questions) for j in range(per_question)]


def load_trait_file(path: str | Path, name: str | None = None) -> TraitFile:
    """A persona_vectors trait file; `name` (default: the file's `name`, else its stem) is the
    trait's name in the positive system prompts."""
    path = Path(path)
    data = read_json(path, f"trait file {path}")
    fix = "expected the persona_vectors format {instruction: [{pos, neg}], questions: [...], eval_prompt}"
    if not isinstance(data, dict):
        raise InputError(f"trait file {path}: {fix}")
    pairs = data.get("instruction")
    if not isinstance(pairs, list) or not pairs or not all(
        isinstance(p, dict) and all(isinstance(p.get(s), str) and p[s].strip() for s in SIDES) for p in pairs
    ):
        raise InputError(f"trait file {path}: 'instruction' must be a non-empty list of {{pos, neg}} strings; {fix}")
    questions = questions_of(data, f"trait file {path}", f"; {fix}")
    prompt = data.get("eval_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"trait file {path}: 'eval_prompt' must be the rubric string; {fix}")
    for field in ("question", "answer"):
        if "{" + field + "}" not in prompt:
            raise InputError(f"trait file {path}: 'eval_prompt' has no {{{field}}} placeholder; add one where the {field} goes")
    held_out = questions_of(data, f"trait file {path}", key="eval_questions") if "eval_questions" in data else None
    stated = data.get("name")
    if stated is not None and not (isinstance(stated, str) and stated.strip()):
        raise InputError(f"trait file {path}: 'name' must be the trait's name, a non-empty string; fix it or drop it")
    return TraitFile(name or stated or path.stem, [(p["pos"], p["neg"]) for p in pairs], questions, prompt,
                     stated_mode(data, f"trait file {path}"), held_out)


def questions_of(data: Mapping[str, object], what: str, fix: str = "", key: str = "questions") -> list[str]:
    """The `questions` (or another `key`) of a trait file or a `{"questions": [...]}` file, checked."""
    questions = data.get(key)
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise InputError(f"{what}: '{key}' must be a non-empty list of strings{fix}")
    return list(questions)


def generate_all(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    trait: TraitFile,
    per_question: int,
    sampling: SamplingConfig,
    out_dir: Path,
    model_name: str,
    on_batch: Callable[[int], object] | None = None,
    vllm: VllmConfig | None = None,
) -> dict[str, list[QAPair]]:
    """Answers per persona (`pos_0`, ...), saved as `out_dir/<persona>.jsonl`; a file saved for
    the same model, prompt and sampling is read back instead (`on_batch` hears those too).
    With `vllm` the missing personas' answers come from one vLLM run (`model` may be the
    weightless skeleton), saved in `out_dir/vllm/` with the engine in their key, as `pvrs
    extract --generate` keeps each engine's answers apart."""
    from contextlib import closing

    from pvrs.extraction.generate import (
        answer_request,
        generate_answers,
        save_generations,
        saved_generations,
    )

    engine = None
    if vllm is not None:
        from pvrs.engines.vllm_engine import version

        engine, out_dir = f"vllm {version()}", out_dir / "vllm"
    questions = trait.samples(per_question)
    out: dict[str, list[QAPair]] = {}
    missing = []
    for persona in trait.personas():
        path = out_dir / f"{persona.id}.jsonl"
        key = {"model": model_name, "system": persona.templated, "sampling": asdict(sampling)}
        if engine is not None:
            key["engine"] = engine
        rows = saved_generations(path, questions, key)
        if rows is not None:
            if on_batch is not None:
                on_batch(len(rows))
        elif vllm is not None:  # answered below, with the other missing personas
            missing.append(answer_request(tokenizer, persona, "templated", questions, path, key))
            continue
        else:
            rows = generate_answers(model, tokenizer, persona, "templated", questions, sampling, on_batch)
            save_generations(path, rows, key)
        out[persona.id] = rows
    if missing:
        from pvrs.engines.vllm_engine import VllmEngine

        assert vllm is not None
        with closing(VllmEngine(vllm, model, tokenizer, [])) as answering:
            for i, rows in answering.answer(missing, sampling, on_batch or (lambda n: None)):
                assert not isinstance(rows, str)  # the vLLM engine yields rows, never a failure text
                job = missing[i]
                assert job.path is not None
                save_generations(job.path, rows, job.key)
                out[job.persona.id] = rows
    return {persona.id: out[persona.id] for persona in trait.personas()}


@dataclass(frozen=True)
class Pair:
    """The positive and negative answer to one question sample under one instruction pair;
    a score is None where the judge gave none (a `REFUSAL`, or no number)."""

    instruction: int
    qid: str
    question: str
    pos_answer: str
    neg_answer: str
    pos_trait: float | None
    neg_trait: float | None
    pos_coherence: float | None
    neg_coherence: float | None

    def drop_reason(self, min_trait_pos: float, max_trait_neg: float, min_coherence: float) -> str:
        """Why the pair is not kept ("" when it is): scores the judge did not give, else the
        thresholds it misses."""
        pt, nt, pc, nc = self.pos_trait, self.neg_trait, self.pos_coherence, self.neg_coherence
        if pt is None or nt is None or pc is None or nc is None:
            missing = [k for k, v in (("pos_trait", pt), ("neg_trait", nt), ("pos_coherence", pc), ("neg_coherence", nc))
                       if v is None]
            return f"no score: {', '.join(missing)}"
        checks = [(pt >= min_trait_pos, f"pos_trait {pt:g} < {min_trait_pos:g}"),
                  (nt < max_trait_neg, f"neg_trait {nt:g} >= {max_trait_neg:g}"),
                  (pc >= min_coherence, f"pos_coherence {pc:g} < {min_coherence:g}"),
                  (nc >= min_coherence, f"neg_coherence {nc:g} < {min_coherence:g}")]
        return "; ".join(why for ok, why in checks if not ok)


def pairs(
    trait: TraitFile, answers: Mapping[str, Sequence[QAPair]], scores: Mapping[str, Mapping[tuple[str, str], float | None]]
) -> list[Pair]:
    """Every (instruction, sample) pair with its four scores; `scores[rubric][(persona, qid)]`
    for the rubrics `trait` and `coherence`."""
    out = []
    for k in range(len(trait.instructions)):
        for pos, neg in zip(answers[f"pos_{k}"], answers[f"neg_{k}"], strict=True):
            values = [scores[r][(f"{side}_{k}", pos.qid)] for side in SIDES for r in ("trait", "coherence")]
            out.append(Pair(k, pos.qid, pos.question, pos.answer, neg.answer, values[0], values[2], values[1], values[3]))
    return out


def write_pairs(rows: Sequence[Pair], reasons: Sequence[str], path: Path) -> None:
    """pairs.csv: every pair, its scores (blank: none), `kept`, and why a dropped one was."""
    from pvrs.store import atomic_path

    fields = list(Pair.__dataclass_fields__)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*fields, "kept", "reason"])
        for row, reason in zip(rows, reasons, strict=True):
            writer.writerow([*(getattr(row, k) for k in fields), int(not reason), reason])


def responses(trait: TraitFile, kept: Sequence[Pair], side: str) -> list[Response]:
    """The kept answers of one side as contrast rows (question, answer, system)."""
    from pvrs.steering.contrast import Response

    return [Response(f"{side}_{p.instruction}:{p.qid}", p.question, p.pos_answer if side == "pos" else p.neg_answer,
                     trait.system_prompt(side, p.instruction)) for p in kept]


def side_means(model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Response]) -> np.ndarray:
    """`(3, num_layers, H)`: the mean over `rows` of the answer-token mean, the whole-prompt
    mean and the last prompt token (VECTOR_KINDS order), one forward per conversation."""
    from pvrs.engines.transformers import sample_means
    from pvrs.extraction.masks import MaskStrategy
    from pvrs.steering.contrast import prepare_responses

    strategies = [MaskStrategy.ANSWER_MEAN, MaskStrategy.ANSWER_PREVIOUS]
    prepared = prepare_responses(tokenizer, rows, strategies)
    masks = []
    for p in prepared:
        answer, last = p.token_masks[MaskStrategy.ANSWER_MEAN], p.token_masks[MaskStrategy.ANSWER_PREVIOUS]
        # The prompt is every token up to and including the one before the answer (the
        # rendered system prompt, question and template tokens: generate_vec's prompt).
        prompt = np.arange(len(last)) <= int(np.flatnonzero(last)[0])
        masks.append(np.stack([answer, prompt, last]))
    return sample_means(model, [p.input_ids for p in prepared], masks, per_sample=False).mean


def difference_vectors(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, trait: TraitFile, kept: Sequence[Pair]
) -> dict[str, np.ndarray]:
    """Positive minus negative mean per kind (`(num_layers, H)` float32 each)."""
    if not kept:
        raise InputError("no pair passed the thresholds; lower --min-trait-pos / --min-coherence, raise --max-trait-neg, or use more --samples")
    pos, neg = (side_means(model, tokenizer, responses(trait, kept, side)).astype(np.float64) for side in SIDES)
    diff = (pos - neg).astype(np.float32)
    if not np.isfinite(diff).all():
        raise NonFiniteError("the trait vectors hold NaN or Inf; check the model's dtype")
    return dict(zip(VECTOR_KINDS, diff, strict=True))


def summary(trait: TraitFile, rows: Sequence[Pair], reasons: Sequence[str]) -> dict[str, Any]:
    """Counts and mean scores (over the scores the judge gave) for summary.json."""
    def mean(values: Sequence[float | None]) -> float | None:
        scored = [v for v in values if v is not None]
        return float(np.mean(scored)) if scored else None

    return {
        "trait": trait.name, "instructions": len(trait.instructions), "questions": len(trait.questions),
        "pairs": len(rows), "kept": sum(not r for r in reasons),
        "unscored_pairs": sum(None in (p.pos_trait, p.neg_trait, p.pos_coherence, p.neg_coherence) for p in rows),
        **{f"mean_{side}_{r}": mean([getattr(p, f"{side}_{r}") for p in rows]) for side in SIDES for r in ("trait", "coherence")},
    }
