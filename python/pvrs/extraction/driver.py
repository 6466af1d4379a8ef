"""The extract driver: persona vectors for personas x variants x mask strategies, saved per persona
as soon as it is done (a killed run loses at most the persona in flight). Samples come from
`extraction.samples`; results are recorded and saved by `extraction.results`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.defaults import DEFAULT_BATCH_TOKENS
from pvrs.engines.generation import answer_job
from pvrs.engines.hooks import decoder_layers
from pvrs.engines.jobs import VARIANTS, AnswerJob, Persona, PersonaOutcome, QAPair, SamplingConfig
from pvrs.engines.models import builtin_source
from pvrs.engines.transformers import (
    EngineConfig,
    max_positions,
    model_sizes,
    resolve_layers,
    sample_means,
)
from pvrs.errors import EngineStartError, InputError, InvalidArgumentError, PvrsError
from pvrs.extraction.masks import DEFAULT_STRATEGY, MaskStrategy, parse_strategies
from pvrs.extraction.results import ExtractionResult, Job, Saver
from pvrs.extraction.samples import Answerer, SampleSource, chat_template_sha256
from pvrs.progress import progress_bar

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.engines.ray_engine import Cluster, RayConfig
    from pvrs.engines.vllm_engine import VllmConfig, VllmEngine
    from pvrs.store import PersonaVectorStore


@dataclass
class _Planned:
    """A persona x variant to compute, or skipped as already saved from the same samples."""

    persona: Persona
    variant: str
    strategies: list[MaskStrategy]
    digest: str
    note: str = ""


# What resume decides for (persona, variant, strategies, sample ids, digest): "todo", "saved",
# or "other" (saved from other samples), with a note saying why.
Resume = Callable[[Persona, str, list[MaskStrategy], list[str], str], tuple[str, str]]


def _plan(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    personas: Sequence[Persona],
    source: SampleSource,
    variants: Sequence[str],
    strategies: list[MaskStrategy],
    resume: Resume,
    *,
    force: bool,
    split_special_tokens: bool,
) -> tuple[list[_Planned], list[_Planned], list[PersonaOutcome]]:
    """What each (persona, variant) needs, decided before any answer is generated or weight
    loaded (`model` may be a weightless skeleton): the ones to compute, the ones skipped as
    saved from the same samples, and the outcomes of the skipped and failed ones. A persona
    saved from other samples (other ids, answers, persona prompt or settings) stops the run
    unless `force`: a rerun with other settings never replaces what is saved."""
    from pvrs.extraction.template import analyze_template

    persona_strategies = {MaskStrategy.PERSONA_MEAN, MaskStrategy.PERSONA_LAST}
    baseline_strategies, baseline_note = strategies, ""
    if (
        persona_strategies & set(strategies)
        and any(p.is_baseline for p in personas)
        and analyze_template(tokenizer, has_system=False).default_system is None
    ):
        # The baseline has no system prompt, and this template injects none to average over.
        baseline_strategies = [s for s in strategies if s not in persona_strategies]
        baseline_note = "no persona_* vectors: no system prompt"
    outcomes: list[PersonaOutcome] = []
    todo: list[_Planned] = []
    skipped: list[_Planned] = []
    others: list[str] = []
    for persona in personas:
        job_strategies = baseline_strategies if persona.is_baseline else strategies
        if not job_strategies:
            outcomes.extend(PersonaOutcome(persona.id, v, "failed", baseline_note) for v in variants)
            continue
        selected = source.selected(persona)
        ids = [r.sample_id for r in selected]
        for variant in variants:
            digest = source.digest(model, tokenizer, persona, variant, selected, split_special_tokens)
            if not ids:
                why = "no QA rows left after the score filter" if source.scores is not None else "no QA rows (train split, --qa-type)"
                outcomes.append(PersonaOutcome(persona.id, variant, "failed", why))
                continue
            state, note = ("todo", "") if force else resume(persona, variant, job_strategies, ids, digest)
            if state == "other":
                others.append(f"{persona.id} [{variant}] is {note}")
            elif state == "saved":
                skipped.append(_Planned(persona, variant, job_strategies, digest))
                outcomes.append(PersonaOutcome(persona.id, variant, "skipped", "already saved with the same samples (use --force)"))
            else:
                resume_note = "; ".join(n for n in (baseline_note if persona.is_baseline else "", note) if n)
                todo.append(_Planned(persona, variant, job_strategies, digest, resume_note))
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise InputError(
            f"{others[0]}{more}; pass --force (force=True) to replace them, or another --output-dir "
            "(save_to=) to keep both"
        )
    return todo, skipped, outcomes


def _prepare_jobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    todo: Sequence[_Planned],
    source: SampleSource,
    *,
    split_special_tokens: bool,
    console: Console,
    progress: bool,
    answerer: Answerer | None = None,
) -> tuple[list[Job], list[PersonaOutcome]]:
    """Generate answers for the planned personas (with a progress bar; here, or by
    `answerer`: Ray replicas, vLLM) and render and tokenise everything before the first forward
    pass, so template and data errors stop the run before anything is written."""
    from pvrs.extraction.chat import prepare_inputs

    outcomes: list[PersonaOutcome] = []
    jobs: list[Job] = []
    # Generating answers takes a while: a bar with answers/s. Rendering alone: a status line.
    bar = progress_bar(console, enabled=progress) if source.generate is not None and todo else None
    status = console.status("preparing conversations") if bar is None and progress else None
    with bar or status or nullcontext():
        task = bar.add_task("answers", total=sum(len(source.questions(p.persona)) for p in todo), rate="") if bar else None
        start, generated = time.perf_counter(), 0

        def on_answers(n: int, reused: bool) -> None:
            nonlocal generated
            generated += 0 if reused else n
            if bar is not None and task is not None:
                bar.update(task, advance=n, rate=f"{generated / max(time.perf_counter() - start, 1e-9):.1f} answers/s")

        def answer_here(asks: Sequence[AnswerJob], sampling: SamplingConfig, on_batch: Callable[[int], object]) -> Iterator[tuple[int, list[QAPair] | str]]:
            for i, ask in enumerate(asks):
                if bar is not None and task is not None:
                    bar.update(task, description=f"answering {ask.persona.id} [{ask.variant}]")
                yield i, answer_job(model, tokenizer, ask, sampling, on_batch)

        answered = (
            source.answers(model, tokenizer, [(p.persona, p.variant) for p in todo], answerer or answer_here, on_answers)
            if source.generate is not None
            else [source.questions(p.persona) for p in todo]
        )
        for planned, rows in zip(todo, answered, strict=True):
            persona, variant = planned.persona, planned.variant
            if isinstance(rows, str):
                outcomes.append(PersonaOutcome(persona.id, variant, "failed", rows))
                continue
            if status is not None:
                status.update(f"rendering {persona.id} [{variant}]")
            samples = source.passing(persona, rows)
            prepared = prepare_inputs(
                tokenizer,
                [(s.sample_id, s.question, s.answer) for s in samples],
                system_prompt=persona.system_prompt(variant),
                strategies=planned.strategies,
                split_special_tokens=split_special_tokens,
            )
            jobs.append(Job(persona, variant, samples, prepared, planned.strategies, planned.digest, planned.note))
    return jobs, outcomes


def extract(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    personas: Sequence[Persona],
    qa_pairs: Sequence[QAPair] | SampleSource,
    *,
    variants: Sequence[str] = VARIANTS,
    mask_strategies: str | Sequence[str | MaskStrategy] = (DEFAULT_STRATEGY,),
    layers: Sequence[int] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    padding_side: str = "right",
    prefix_reuse: bool = True,
    model_name: str | None = None,
    save_to: str | Path | None = None,
    save: bool = False,
    force: bool = False,
    save_samples: bool = False,
    revision: str | None = None,
    allow_long_samples: bool = False,
    split_special_tokens: bool = False,
    progress: bool = True,
    verbose: bool = False,
    console: Console | None = None,
    ray: RayConfig | None = None,
    vllm: VllmConfig | None = None,
    load: Callable[[], nn.Module] | None = None,
) -> ExtractionResult:
    """Extract persona vectors (DESIGN.md pooling and layer convention).

    With `save=True` (or `save_to=ROOT`) each persona's vectors are written to the store as soon
    as they are computed; personas already saved from the same samples are skipped unless
    `force`, and personas saved from other samples (other ids, answers, persona prompt or
    settings) are an `InputError` unless `force`, before any work; a save that fails with an
    OS error (disk full) stops the run, saying why in `result.stopped`. `qa_pairs` is a list of QA rows or a `SampleSource` (train split / type selection,
    answer generation, judge-score filtering). A conversation longer than the model's positions
    is refused before any forward pass unless `allow_long_samples` (then a warning).
    `split_special_tokens` tokenizes control-token strings inside contents as text (see
    `prepare_inputs`). With `ray` the jobs (and answer generation) run on Ray replicas
    (`pvrs.engines.ray_engine`: `model` may be its weightless `skeleton`) and come back here to
    be saved. With `vllm` answers are generated and vectors computed by vLLM
    (`pvrs.engines.vllm_engine`; `model` may be a weightless `skeleton`). With `load`, `model`
    is the weightless `skeleton` that plans the run, and `load()` returns the weights only if
    some persona needs computing. `verbose` previews the tokens each persona's vectors average,
    skipped personas included. Returns every vector computed in this call."""
    from rich.console import Console

    from pvrs.store import PersonaVectorStore

    console = console or Console(stderr=True)
    if ray is not None and vllm is not None:
        raise InvalidArgumentError("choose one engine: Ray replicas run the transformers engine; drop --ray or --engine vllm")
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
        "engine": "transformers" if vllm is None else "vllm",
        "engine_version": _engine_version(vllm),
    }
    # The built-in's id names the Hub checkpoint, but its weights are a de-quantised GGUF.
    if (model_source := builtin_source(model)) is not None:
        provenance["model_source"] = model_source

    source = qa_pairs if isinstance(qa_pairs, SampleSource) else SampleSource(qa_pairs)
    if vllm is not None and source.generate is not None:
        source = replace(source, answer_engine=f"vllm {provenance['engine_version']}")
    if saving:
        # A folder made with another model, dtype, revision or template refuses the first save:
        # say so before any forward pass.
        shape = (len(decoder_layers(model)), model_sizes(model)[0])
        for store in stores.values():
            for variant in variants:
                store.check_compatible(variant, shape, provenance)

    def resume(
        persona: Persona, variant: str, job_strategies: list[MaskStrategy], ids: list[str], digest: str
    ) -> tuple[str, str]:
        """"saved" when every strategy's vector is saved from these samples (`has` checks the
        file, sha256 and a NaN/Inf scan included); "other" when a usable one was saved from
        other samples; else "todo", saying why any recorded one that fails the checks is redone."""
        if not saving:
            return "todo", ""
        missing = [
            s for s in job_strategies
            if not stores[s].has(persona.id, variant, ids, samples_sha256=digest, with_samples=save_samples)
        ]
        if not missing:
            return "saved", ""
        problems = [(s, stores[s].tensor_problem(persona.id, variant)) for s in missing]
        for s, problem in problems:
            other = None if problem else _other_samples(stores[s], persona.id, variant, ids, digest)
            if other:
                return "other", other
        return "todo", "; ".join(f"recomputed: {p} ({s.value})" for s, p in problems if p)

    todo, skipped, outcomes = _plan(
        model, tokenizer, personas, source, variants, strategies, resume,
        force=force, split_special_tokens=split_special_tokens,
    )
    for planned in skipped if verbose else ():
        _preview_saved(console, tokenizer, source, planned, split_special_tokens)
    result = ExtractionResult(layers=resolved_layers, outcomes=outcomes)
    if not todo:
        return result
    if load is not None:
        model = load()
    # On Ray the replicas answer (`--generate`) and compute, on vLLM its engine does; the driver
    # saves. They end with the run.
    with _cluster(ray, config, provenance["dtype"]) as cluster, _vllm_engine(vllm, model, tokenizer, resolved_layers) as engine:
        jobs, failed = _prepare_jobs(
            model, tokenizer, todo, source,
            split_special_tokens=split_special_tokens, console=console, progress=progress,
            answerer=cluster.answer if cluster is not None else engine.answer if engine is not None else None,
        )
        result.outcomes.extend(failed)
        _check_lengths(model, jobs, allow_long_samples, console)

        start = time.perf_counter()
        saver = Saver(stores if saving else None, provenance, result, save_to)
        if cluster is not None:
            from pvrs.engines.ray_engine import run_on_ray

            for job in jobs if verbose else ():  # jobs run out of order there: previews first
                _preview(console, tokenizer, job)
            run_on_ray(cluster, jobs, save_samples, saver, console, progress=progress)
            result.seconds = time.perf_counter() - start
            return result
        with progress_bar(console, enabled=progress) as bar:
            task_personas = bar.add_task("personas", total=len(jobs), rate="")
            task_samples = bar.add_task("samples", total=sum(len(j.prepared) for j in jobs), rate="")
            for job in jobs:
                bar.update(task_personas, description=f"{job.persona.id} [{job.variant}]")
                if verbose:
                    _preview(console, tokenizer, job)

                def on_batch(n_samples: int, n_tokens: int) -> None:
                    result.tokens += n_tokens
                    rate = result.tokens / max(time.perf_counter() - start, 1e-9)
                    bar.update(task_samples, advance=n_samples, rate=f"{rate:,.0f} tok/s")

                try:
                    means = (
                        sample_means(
                            model, job.input_ids, job.masks, config,
                            sample_ids=job.sample_ids, on_batch=on_batch, per_sample=save_samples,
                        )
                        if engine is None
                        else engine.sample_means(
                            job.input_ids, job.masks, sample_ids=job.sample_ids, per_sample=save_samples,
                            batch_tokens=config.batch_tokens, on_batch=on_batch,
                        )
                    )
                except EngineStartError:
                    raise  # no persona can run: one error for the run, not a failure per persona
                except PvrsError as exc:
                    result.outcomes.append(PersonaOutcome(job.persona.id, job.variant, "failed", str(exc)))
                else:
                    # A budget lowered by CUDA out-of-memory stays lowered for the next personas.
                    config = replace(config, batch_tokens=means.batch_tokens)
                    if not saver.save(job, means):
                        break
                bar.advance(task_personas)
        result.seconds = time.perf_counter() - start
        return result


def _cluster(ray: RayConfig | None, config: EngineConfig, dtype: str) -> AbstractContextManager[Cluster | None]:
    if ray is None:
        return nullcontext()
    from pvrs.engines.ray_engine import Cluster

    return closing(Cluster(ray, config, dtype))


def _engine_version(vllm: VllmConfig | None) -> str | None:
    if vllm is not None:
        from pvrs.engines.vllm_engine import version

        return version()
    import transformers

    return str(transformers.__version__)


def _vllm_engine(
    vllm: VllmConfig | None, model: nn.Module, tokenizer: PreTrainedTokenizerBase, layers: list[int]
) -> AbstractContextManager[VllmEngine | None]:
    if vllm is None:
        return nullcontext()
    from pvrs.engines.vllm_engine import VllmEngine

    return closing(VllmEngine(vllm, model, tokenizer, layers))


def _preview(console: Console, tokenizer: PreTrainedTokenizerBase, job: Job) -> None:
    from pvrs.extraction.chat import print_preview

    print_preview(console, tokenizer, job.prepared[0], job.strategies)


def _preview_saved(
    console: Console, tokenizer: PreTrainedTokenizerBase, source: SampleSource, planned: _Planned, split_special_tokens: bool
) -> None:
    """--verbose on a skipped persona: what its saved vectors averaged, rendered with the
    tokenizer alone. Generated answers are not read back for it (nor generated)."""
    from rich.markup import escape

    from pvrs.extraction.chat import prepare_inputs, print_preview

    what = f"{escape(planned.persona.id)} \\[{planned.variant}]: skipped, already saved"
    if source.generate is not None:
        console.print(f"[dim]{what} from generated answers: no preview (`pvrs preview` shows the masks)[/]")
        return
    first = source.selected(planned.persona)[0]
    [prepared] = prepare_inputs(
        tokenizer, [(first.sample_id, first.question, first.answer)], system_prompt=planned.persona.system_prompt(planned.variant),
        strategies=planned.strategies, split_special_tokens=split_special_tokens,
    )
    console.print(f"{what}; its vectors averaged:")
    print_preview(console, tokenizer, prepared, planned.strategies)


def _other_samples(store: PersonaVectorStore, persona_id: str, variant: str, ids: list[str], digest: str) -> str | None:
    """Where and how the persona's vector recorded in `store` was computed from other samples
    than `ids` / `digest`; None when none is recorded or it was computed from these."""
    manifest = store.read_manifest(variant)
    entry = None if manifest is None else manifest["personas"].get(persona_id)
    if not isinstance(entry, dict) or store.has(persona_id, variant, ids, samples_sha256=digest):
        return None
    saved = [str(s) for s in entry.get("sample_ids") or []]
    where = f"saved in {store.variant_dir(variant)}"
    if len(saved) != len(ids):
        return f"{where} from {len(saved)} samples, this run has {len(ids)}"
    if saved != ids:
        return f"{where} from other sample ids"
    return f"{where} from other answers, persona prompt or settings under the same sample ids"


def _check_lengths(model: nn.Module, jobs: Sequence[Job], allow: bool, console: Console) -> None:
    """Positions past the model's limit give activations it was never trained on: refuse such
    samples unless allowed, and say so either way."""
    limit = max_positions(model)
    lengths = [(len(p.input_ids), j, p.sample_id) for j in jobs for p in j.prepared]
    too_long = [item for item in lengths if limit is not None and item[0] > limit]
    if not too_long:
        return
    n, job, sample_id = max(too_long, key=lambda item: item[0])
    what = (
        f"{len(too_long)} conversation(s) exceed the model's {limit:,} positions (longest: "
        f"{job.persona.id} [{job.variant}] sample {sample_id!r}, {n:,} tokens)"
    )
    if not allow:
        raise InputError(
            f"{what}; shorten them, or pass --allow-long-samples (allow_long_samples=True) to "
            "extract them anyway"
        )
    console.print(f"[yellow]warning:[/] {what}; extracting them anyway (--allow-long-samples)")
