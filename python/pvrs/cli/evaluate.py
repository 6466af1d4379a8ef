"""`pvrs eval`: judge-scored steering over a grid of layers x alphas (or caps x taus), with the
unsteered and prompted baselines, a report, and the recommended layer and alpha (or cap)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.cli.common import (
    UniqueList,
    add_engine_args,
    add_generation_args,
    add_model_and_store_args,
    check_writable,
    magnitude,
    score_threshold,
    vllm_config,
    writing,
)
from pvrs.cli.judge import add_judge_args, cache_path, make_judge, release, score_cache
from pvrs.cli.steering import add_band_schedule_args
from pvrs.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.judge import Judge
    from pvrs.judge.evaluation import EvalSetup


def _output_dir(args: argparse.Namespace) -> Path:
    from pvrs.analysis.tables import slug
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.paths import artifacts_dir

    if args.output_dir:
        return Path(args.output_dir)
    return artifacts_dir() / "eval" / model_dir_name(canonical_model_name(args.model)) / slug(args.vector)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pvrs.cli.steering_run import load_model, read_prompts, resolve_vector
    from pvrs.engines.models import canonical_model_name
    from pvrs.extraction.generate import SamplingConfig
    from pvrs.judge import load_rubric
    from pvrs.judge.evaluation import EvalSetup

    out = _output_dir(args)
    check_writable("--output-dir", out, is_dir=True)
    cache_path(args, out / "cells")  # a bad --cache fails now, not after the model loads
    check_grid_args(args)
    vllm = vllm_config(args)
    setup = EvalSetup(
        questions=read_prompts(args), trait=args.trait,
        trait_rubric=load_rubric(args.trait_rubric, "--trait-rubric", args.judge_mode),
        coherence_rubric=load_rubric(args.coherence_rubric, "--coherence-rubric"),
        sampling=SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed),
        system_prompt=args.prompted, positions=args.positions, schedule=args.schedule,
    )
    vector = resolve_vector(args.vector, args)
    grid_layers(args, vector)  # a bad --layer or --cap fails before any model or judge loads
    judge = make_judge(args)
    # On vLLM, transformers only measures the residual norms of --relative or --band-scale norm (then is freed).
    model, tokenizer = load_model(args, None if needs_norms(args) else vllm)
    evaluate(args, args.vector, vector, setup, judge, (model, tokenizer, canonical_model_name(args.model)), out,
             Console(stderr=True), vllm)
    return 0


def check_grid_args(args: argparse.Namespace) -> None:
    """A grid needs --layer (or --band) with --alpha, --cap with --tau, or both pairs."""
    steering = args.layer or args.band
    if steering and not args.alpha:
        raise InputError(f"{'--layer' if args.layer else '--band'} needs --alpha: the grid is every pair of them")
    if args.alpha and not steering:
        raise InputError("--alpha needs --layer or --band: the grid is every pair of them")
    if bool(args.cap) != bool(args.tau):
        given, missing = ("--cap", "--tau") if args.cap else ("--tau", "--cap")
        raise InputError(f"{given} needs {missing}: the grid is every pair of them")
    if not steering and not args.cap:
        raise InputError("nothing to evaluate: pass --layer and --alpha (steering), --cap and --tau (capping), or both")
    if args.relative and args.band_scale == "norm":
        raise InputError("--relative already scales each layer by its residual norm; drop --band-scale norm")


def grid_layers(args: argparse.Namespace, vector: np.ndarray) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """The --layer blocks, each --cap's and each --band's set of blocks, checked against `vector`."""
    from pvrs.cli.steering_run import vector_layers

    layers = vector_layers(args.layer, vector) if args.layer else []
    return (layers, [vector_layers([spec], vector, "--cap") for spec in args.cap or []],
            [vector_layers([spec], vector, "--band") for spec in args.band or []])


def needs_norms(args: argparse.Namespace) -> bool:
    """Whether the grid's alphas depend on residual norms, which the transformers model measures."""
    return bool(args.relative or (args.band and args.band_scale == "norm"))


def evaluate(
    args: argparse.Namespace,
    name: str,
    vector: np.ndarray,
    setup: EvalSetup,
    judge: Judge,
    loaded: tuple[Any, Any, str],
    out: Path,
    console: Console,
    vllm: VllmConfig | None = None,
) -> dict[str, Any]:
    """Run the grid the flags describe for `vector` (called `name`) into `out`: cells,
    results.csv, summary.json and the report; prints the table and the recommendation and
    returns the summary. `loaded` is (model, tokenizer, model name). With `vllm` every unsaved
    cell is answered in one vLLM batch (`model` then only measures --relative's norms, and may
    be the weightless skeleton without it), and the cells record the engine."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from pvrs.judge.evalreport import write_report, write_table
    from pvrs.judge.evaluation import cap_grid, grid, recommend, recommend_cap, run_eval
    from pvrs.steering.interventions import band, suggested_alphas
    from pvrs.store import atomic_write_bytes

    model, tokenizer, model_name = loaded
    layers, caps, bands = grid_layers(args, vector)
    steered = sorted({*layers, *(i for b in bands for i in b)})
    strengths = suggested_alphas(model, tokenizer, vector, steered, 1.0) if args.relative and steered else None
    # A band cell adds alpha times its share at each layer (and times the layer's unit of --relative).
    band_units = [{i: (1.0 if strengths is None else strengths[i]) * share
                   for i, share in band(model, tokenizer, b, 1.0, args.band_scale).items()} for b in bands]
    cells = grid(layers, args.alpha or [], strengths, prompted=setup.system_prompt is not None, bands=band_units)
    cells += cap_grid(caps, args.tau or [], args.cap_side)
    batch = None
    if vllm is not None:
        from pvrs.cli.steering_run import model_dtype, vllm_answerer
        from pvrs.engines.vllm_engine import version
        from pvrs.judge.evaluation import DIRECTION

        setup = replace(setup, engine=f"vllm {version()}")
        batch = vllm_answerer(vllm, {DIRECTION: vector}, tokenizer, setup.sampling, model_dtype(model))
    resumed = 0
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"evaluating {name}"[:28], total=len(cells))

        def done(result: object, was_saved: bool) -> None:
            nonlocal resumed
            resumed += was_saved
            progress.advance(task)

        results = run_eval(model, tokenizer, vector, cells, setup, judge, out, model_name=model_name,
                           cache=score_cache(args, out / "cells"), on_cell=done, batch=batch)
    release(judge)  # a judge on vLLM frees the device for the next engine
    best = recommend(results, args.min_coherence) if steered else None
    best_cap = recommend_cap(results, args.min_coherence) if caps else None
    table = Table(title=f"pvrs eval: {name} on {args.model} (trait: {setup.trait})")
    for column in ("cell", "layer", "alpha", "cap", "tau", "trait", "coherence"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for r in results:
        mark = " *" if r is best or r is best_cap else ""
        c = r.cell
        table.add_row(c.kind + mark, c.band or ("" if c.layer is None else str(c.layer)),
                      "" if c.alpha is None else f"{c.alpha:g}", c.cap or "",
                      "" if c.tau is None else f"{c.tau:g}", f"{r.trait:.1f}", f"{r.coherence:.1f}")
    console.print(table)
    unscored = {"trait": sum(r.unscored[0] for r in results), "coherence": sum(r.unscored[1] for r in results)}
    if any(unscored.values()):
        console.print(f"{unscored['trait']} trait and {unscored['coherence']} coherence scores missing (REFUSAL or no number): "
                      "cell means are over the scored answers (counts per cell in results.csv)")
    verdicts = []
    if steered:
        verdicts.append(
            f"{best.cell.where}, alpha {best.cell.alpha:g}: trait {best.trait:.1f} at coherence {best.coherence:.1f}"
            if best is not None
            else f"none: no steered cell keeps coherence >= {args.min_coherence:g}; try smaller alphas"
        )
    if caps:
        verdicts.append(
            f"{best_cap.cell.kind} layers {best_cap.cell.cap}, tau {best_cap.cell.tau:g}: trait {best_cap.trait:.1f} "
            f"at coherence {best_cap.coherence:.1f}"
            if best_cap is not None
            else f"none: no capped cell keeps coherence >= {args.min_coherence:g}"
        )
    verdict = "; ".join(verdicts)
    summary: dict[str, Any] = {
        "vector": name, "model": args.model, "engine": setup.engine or "transformers", "trait": setup.trait, "judge": judge.id,
        "min_coherence": args.min_coherence, "cells_resumed": resumed,
        "unscored": unscored,
        "recommended": None if best is None else {**vars(best.cell), "trait": best.trait, "coherence": best.coherence},
    }
    if caps:
        summary["recommended_cap"] = None if best_cap is None else {
            **vars(best_cap.cell), "trait": best_cap.trait, "coherence": best_cap.coherence}
    with writing(out):
        write_table(results, out / "results.csv")
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False).encode())
        facts = [("vector", name), ("model", args.model), ("engine", setup.engine or "transformers"),
                 ("trait", setup.trait), ("judge", judge.id),
                 ("questions", str(len(setup.questions))), ("recommended", verdict)]
        if not args.no_report:
            write_report(results, out, facts, args.min_coherence, png=not args.no_png)
    console.print(f"recommended: {verdict}\nwrote {out} ({resumed} of {len(cells)} cells resumed)")
    return summary


def add_grid_args(p: argparse.ArgumentParser, min_coherence_help: str | None = None) -> None:
    """The grid flags shared by `pvrs eval` and `pvrs trait`: layers x alphas and caps x taus,
    the tokens touched, the recommendation threshold (`min_coherence_help` says what else a
    command uses it for) and the report."""
    from pvrs.judge.evaluation import DEFAULT_MIN_COHERENCE

    g = p.add_argument_group("grid (layers x alphas, caps x taus, or both)")
    # A repeated value would be a repeated cell and a repeated row of the table.
    g.add_argument("--layer", nargs="+", action=UniqueList, help="block indices or ranges to steer at, one at a time (12 or 10-14)")
    g.add_argument(
        "--band", nargs="+", metavar="LAYERS", action=UniqueList,
        help="also steer each item's blocks together, a cell per alpha beside the single layers (10-14; see --band-scale)",
    )
    g.add_argument("--alpha", nargs="+", type=magnitude, action=UniqueList, help="strengths to try at each --layer and --band")
    g.add_argument("--relative", action="store_true", help="read each alpha as a fraction of the layer's median residual norm")
    g.add_argument(
        "--cap", nargs="+", metavar="LAYERS", action=UniqueList,
        help="instead of steering, cap the projection on the direction: each item a set of blocks capped together (12 or 10-14)",
    )
    g.add_argument("--tau", nargs="+", type=magnitude, action=UniqueList, help="cap thresholds to try for each --cap: projections on the unit direction")
    g.add_argument(
        "--cap-side", choices=("upper", "lower"), default="upper",
        help="upper: projections above tau are cut to tau (limits the trait); lower: a floor at tau (default %(default)s)",
    )
    g.add_argument(
        "--positions", choices=("all", "prompt", "generated", "response"), default="all",
        help="tokens steered or capped: all, the prompt's, the generated ones, or response: the last position of "
        "every forward (the last prompt token, so the first answer token is steered too, and every generated one) "
        "(default %(default)s)",
    )
    add_band_schedule_args(g)
    g.add_argument(
        "--min-coherence", type=score_threshold, default=DEFAULT_MIN_COHERENCE,
        help=min_coherence_help or "lowest mean coherence a recommended cell may have, 0-100 (default %(default)s)",
    )
    g.add_argument("--no-report", action="store_true", help="write the table only, no HTML report (it needs plotly)")
    g.add_argument("--no-png", action="store_true", help="skip the PNG figure (it needs Chrome/Chromium)")


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.judge.rubrics import BUILTIN

    p = sub.add_parser(
        "eval",
        help="judge-scored steering: trait and coherence over layers x alphas (or caps x taus), and the best setting",
        description="Steer with a direction at each layer and alpha of a grid, answer held-out "
        "questions, have a judge score every answer for the trait and for coherence, and report "
        "the scores next to the unsteered (and, with --prompted, the prompted) baseline. "
        "Recommends the layer and alpha with the highest trait score whose coherence stays at "
        "or above --min-coherence. With --cap and --tau the direction caps instead (each cap a "
        "set of layers, each tau a threshold on the projection), and the cap that moves the trait "
        "furthest at that coherence is recommended. Each cell is saved as it finishes; a rerun resumes.",
    )
    add_model_and_store_args(p)
    p.add_argument(
        "--vector", required=True,
        help="the direction: a stored persona id (minus the baseline), 'assistant-axis', 'biography:ID', "
        "or a vector file (.safetensors/.npy/.pt/.gguf) or folder",
    )
    p.add_argument("--trait", required=True, help="what the judge looks for, e.g. 'speaks like a pirate'")
    p.add_argument("--prompted", metavar="SYSTEM_PROMPT", help="also score the unsteered model under this system prompt (the prompted baseline)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", action="append", help="a held-out question (repeatable)")
    group.add_argument("--prompts", help="file of held-out questions: one per line, or JSON/JSONL with 'question' (default: 3 built-in ones)")
    p.add_argument("--trait-rubric", default="trait", help=f"rubric for the trait: {', '.join(BUILTIN)} or a file (default %(default)s)")
    p.add_argument("--coherence-rubric", default="coherence", help="rubric for coherence: a built-in name or a file (default %(default)s)")
    p.add_argument("--output-dir", metavar="DIR", help="where cells, table and report go (default $ARTIFACTS_DIR/eval/<model>/<vector>)")
    add_grid_args(p)
    add_generation_args(p, system=False)
    add_judge_args(p)
    add_engine_args(p, "the answers of every cell (vLLM: the whole grid in one batch, always eager) and a --local judge")
    p.set_defaults(handler=_cmd_eval)
