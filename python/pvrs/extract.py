"""`pvrs.extract`: persona vectors for personas x variants x mask strategies, saved per persona
as soon as it is done (a killed run loses at most the persona in flight)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.engine import DEFAULT_BATCH_TOKENS, EngineConfig, SampleMeans, resolve_layers, sample_means
from pvrs.errors import InvalidArgumentError, PvrsError
from pvrs.hooks import decoder_layers
from pvrs.inputs import VARIANTS, Persona, QAPair, qa_for_persona
from pvrs.masks import DEFAULT_STRATEGY, MaskStrategy, parse_strategies

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.chat import PreparedInput
    from pvrs.store import PersonaVectorStore


@dataclass
class PersonaOutcome:
    persona_id: str
    variant: str
    status: str  # "written" | "skipped" | "failed"
    reason: str = ""
    n_samples: int = 0
    n_tokens: int = 0


@dataclass
class ExtractionResult:
    """Vectors keyed by (persona_id, variant, strategy), each (len(layers), hidden_size)."""

    layers: list[int]
    vectors: dict[tuple[str, str, MaskStrategy], np.ndarray] = field(default_factory=dict)
    sample_ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    sample_vectors: dict[tuple[str, str, MaskStrategy], np.ndarray] = field(default_factory=dict)
    outcomes: list[PersonaOutcome] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    def vector(self, persona_id: str, variant: str = "templated", strategy: str | MaskStrategy = DEFAULT_STRATEGY) -> np.ndarray:
        return self.vectors[(persona_id, variant, MaskStrategy(str(strategy)))]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def chat_template_sha256(tokenizer: PreTrainedTokenizerBase) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: hash them all, in a stable order
        template = "\n".join(f"{k}\n{v}" for k, v in sorted(template.items()))
    return hashlib.sha256(template.encode()).hexdigest() if template else None


@dataclass
class _Job:
    persona: Persona
    variant: str
    samples: list[QAPair]
    prepared: list[PreparedInput]

    @property
    def sample_ids(self) -> list[str]:
        return [p.sample_id for p in self.prepared]


def _prepare_jobs(
    tokenizer: PreTrainedTokenizerBase,
    personas: Sequence[Persona],
    qa_pairs: Sequence[QAPair],
    variants: Sequence[str],
    strategies: list[MaskStrategy],
    n_train: int | None,
    qa_type: str,
) -> tuple[list[_Job], list[PersonaOutcome]]:
    """Render and tokenise everything before the first forward pass, so template and data
    errors stop the run before anything is written."""
    from pvrs.chat import prepare_inputs

    jobs, failures = [], []
    for persona in personas:
        samples = qa_for_persona(qa_pairs, persona, n_train=n_train, qa_type=qa_type)
        for variant in variants:
            if not samples:
                failures.append(PersonaOutcome(persona.id, variant, "failed", f"no QA rows (train split, type {qa_type})"))
                continue
            prepared = prepare_inputs(
                tokenizer,
                [(s.sample_id, s.question, s.answer) for s in samples],
                system_prompt=persona.system_prompt(variant),
                strategies=strategies,
            )
            jobs.append(_Job(persona, variant, samples, prepared))
    return jobs, failures


def extract(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    personas: Sequence[Persona],
    qa_pairs: Sequence[QAPair],
    *,
    variants: Sequence[str] = VARIANTS,
    mask_strategies: str | Sequence[str | MaskStrategy] = (DEFAULT_STRATEGY,),
    layers: Sequence[int] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    padding_side: str = "right",
    prefix_reuse: bool = True,
    n_train: int | None = None,
    qa_type: str = "all",
    model_name: str | None = None,
    save_to: str | Path | None = None,
    save: bool = False,
    force: bool = False,
    save_samples: bool = False,
    revision: str | None = None,
    progress: bool = True,
    verbose: bool = False,
    console: Console | None = None,
) -> ExtractionResult:
    """Extract persona vectors (DESIGN.md pooling and layer convention).

    With `save=True` (or `save_to=ROOT`) each persona's vectors are written to the store as soon
    as they are computed; personas already saved with the same sample ids are skipped unless
    `force`. Returns every vector computed in this call."""
    from rich.console import Console

    from pvrs.store import PersonaVectorStore

    console = console or Console(stderr=True)
    strategies = parse_strategies(mask_strategies)
    for v in variants:
        if v not in VARIANTS:
            raise InvalidArgumentError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    config = EngineConfig(layers=layers, batch_tokens=batch_tokens, padding_side=padding_side, prefix_reuse=prefix_reuse)
    resolved_layers = resolve_layers(model, layers)
    saving = save or save_to is not None
    if saving and len(resolved_layers) != len(decoder_layers(model)):
        raise InvalidArgumentError("saved persona vectors hold every layer; drop `layers=` when saving")
    name = model_name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    stores: dict[MaskStrategy, PersonaVectorStore] = {
        s: PersonaVectorStore(name, root_dir=save_to, mask_strategy=s.value, variants=tuple(variants)) for s in strategies
    }
    provenance: dict[str, Any] = {
        "model": name,
        "revision": revision,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "chat_template_sha256": chat_template_sha256(tokenizer),
    }

    jobs, failed = _prepare_jobs(tokenizer, personas, qa_pairs, variants, strategies, n_train, qa_type)
    result = ExtractionResult(layers=resolved_layers, outcomes=list(failed))
    todo: list[_Job] = []
    for job in jobs:
        if saving and not force and all(stores[s].has(job.persona.id, job.variant, job.sample_ids) for s in strategies):
            result.outcomes.append(PersonaOutcome(job.persona.id, job.variant, "skipped", "already saved with the same samples (use --force)"))
        else:
            todo.append(job)

    start = time.perf_counter()
    with _progress(console, enabled=progress) as bar:
        task_personas = bar.add_task("personas", total=len(todo), tokens="")
        task_samples = bar.add_task("samples", total=sum(len(j.prepared) for j in todo), tokens="")
        for job in todo:
            bar.update(task_personas, description=f"{job.persona.id} [{job.variant}]")
            if verbose:
                from pvrs.chat import print_preview

                print_preview(console, tokenizer, job.prepared[0], strategies)

            def on_batch(n_samples: int, n_tokens: int) -> None:
                result.tokens += n_tokens
                rate = result.tokens / max(time.perf_counter() - start, 1e-9)
                bar.update(task_samples, advance=n_samples, tokens=f"{rate:,.0f} tok/s")

            try:
                means = sample_means(
                    model,
                    [p.input_ids for p in job.prepared],
                    [np.stack([p.token_masks[s] for s in strategies]) for p in job.prepared],
                    config,
                    sample_ids=job.sample_ids,
                    on_batch=on_batch,
                )
                outcome = _store_job(job, means, strategies, stores if saving else None, provenance, save_samples, result)
            except PvrsError as exc:
                outcome = PersonaOutcome(job.persona.id, job.variant, "failed", str(exc))
            result.outcomes.append(outcome)
            bar.advance(task_personas)
    result.seconds = time.perf_counter() - start
    return result


def _store_job(
    job: _Job,
    means: SampleMeans,
    strategies: list[MaskStrategy],
    stores: dict[MaskStrategy, PersonaVectorStore] | None,
    provenance: dict[str, Any],
    save_samples: bool,
    result: ExtractionResult,
) -> PersonaOutcome:
    key = (job.persona.id, job.variant)
    result.sample_ids[key] = job.sample_ids
    for s_index, strategy in enumerate(strategies):
        per_sample = means.means[:, s_index]
        vector = per_sample.astype(np.float64).mean(axis=0).astype(np.float32)
        result.vectors[(*key, strategy)] = vector
        if save_samples:
            result.sample_vectors[(*key, strategy)] = per_sample
        if stores is not None:
            store = stores[strategy]
            store.save(
                job.persona.id, job.variant, vector,
                name=job.persona.name, sample_ids=job.sample_ids,
                n_tokens=int(means.counts[:, s_index].sum()), provenance=provenance,
            )
            if save_samples:
                store.save_samples(job.persona.id, job.variant, per_sample, job.sample_ids)
    return PersonaOutcome(job.persona.id, job.variant, "written", n_samples=len(job.prepared), n_tokens=means.tokens_processed)


def _progress(console: Console, *, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
