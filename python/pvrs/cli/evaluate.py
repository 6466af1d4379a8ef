"""`pvrs eval`: judge-scored steering over a grid of layers x alphas, with the unsteered and
prompted baselines, a report, and the recommended layer and alpha."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pvrs.cli.common import (
    add_generation_args,
    add_model_and_store_args,
    check_writable,
    finite_float,
    writing,
)
from pvrs.cli.judge import add_judge_args, make_judge, score_cache


def _output_dir(args: argparse.Namespace) -> Path:
    from pvrs.analysis.tables import slug
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.paths import artifacts_dir

    if args.output_dir:
        return Path(args.output_dir)
    return artifacts_dir() / "eval" / model_dir_name(canonical_model_name(args.model)) / slug(args.vector)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from pvrs.cli.steering_run import load_model, read_prompts, resolve_vector, vector_layers
    from pvrs.engines.models import canonical_model_name
    from pvrs.extraction.generate import SamplingConfig
    from pvrs.judge import load_rubric
    from pvrs.judge.evalreport import write_report, write_table
    from pvrs.judge.evaluation import EvalSetup, grid, recommend, run_eval
    from pvrs.steering.interventions import suggested_alphas
    from pvrs.store import atomic_write_bytes

    out = _output_dir(args)
    check_writable("--output-dir", out, is_dir=True)
    setup = EvalSetup(
        questions=read_prompts(args), trait=args.trait,
        trait_rubric=load_rubric(args.trait_rubric), coherence_rubric=load_rubric(args.coherence_rubric),
        sampling=SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed),
        system_prompt=args.prompted, positions=args.positions,
    )
    vector = resolve_vector(args.vector, args)
    layers = vector_layers(args.layer, vector)
    judge = make_judge(args)
    model, tokenizer = load_model(args)
    strengths = suggested_alphas(model, tokenizer, vector, layers, 1.0) if args.relative else None
    cells = grid(layers, args.alpha, strengths, prompted=args.prompted is not None)
    console = Console(stderr=True)
    resumed = 0
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(cells))

        def done(result: object, was_saved: bool) -> None:
            nonlocal resumed
            resumed += was_saved
            progress.advance(task)

        results = run_eval(model, tokenizer, vector, cells, setup, judge, out, model_name=canonical_model_name(args.model),
                           cache=score_cache(args, out / "cells"), on_cell=done)
    best = recommend(results, args.min_coherence)
    table = Table(title=f"pvrs eval: {args.vector} on {args.model} (trait: {args.trait})")
    for column in ("cell", "layer", "alpha", "trait", "coherence"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for r in results:
        mark = " *" if r is best else ""
        table.add_row(r.cell.kind + mark, *("" if v is None else f"{v:g}" for v in (r.cell.layer, r.cell.alpha)),
                      f"{r.trait:.1f}", f"{r.coherence:.1f}")
    console.print(table)
    verdict = (
        f"layer {best.cell.layer}, alpha {best.cell.alpha:g}: trait {best.trait:.1f} at coherence {best.coherence:.1f}"
        if best is not None
        else f"none: no steered cell keeps coherence >= {args.min_coherence:g}; try smaller alphas"
    )
    summary = {
        "vector": args.vector, "model": args.model, "trait": args.trait, "judge": judge.id,
        "min_coherence": args.min_coherence, "cells_resumed": resumed,
        "recommended": None if best is None else {**vars(best.cell), "trait": best.trait, "coherence": best.coherence},
    }
    with writing(out):
        write_table(results, out / "results.csv")
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False).encode())
        facts = [("vector", args.vector), ("model", args.model), ("trait", args.trait), ("judge", judge.id),
                 ("questions", str(len(setup.questions))), ("recommended", verdict)]
        if not args.no_report:
            write_report(results, out, facts, args.min_coherence, png=not args.no_png)
    console.print(f"recommended: {verdict}\nwrote {out} ({resumed} of {len(cells)} cells resumed)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.judge.evaluation import DEFAULT_MIN_COHERENCE
    from pvrs.judge.rubrics import BUILTIN

    p = sub.add_parser(
        "eval",
        help="judge-scored steering: trait and coherence over layers x alphas, and the best setting",
        description="Steer with a direction at each layer and alpha of a grid, answer held-out "
        "questions, have a judge score every answer for the trait and for coherence, and report "
        "the scores next to the unsteered (and, with --prompted, the prompted) baseline. "
        "Recommends the layer and alpha with the highest trait score whose coherence stays at "
        "or above --min-coherence. Each cell is saved as it finishes; a rerun resumes.",
    )
    add_model_and_store_args(p)
    p.add_argument(
        "--vector", required=True,
        help="the direction: a stored persona id (minus the baseline), 'assistant-axis', 'biography:ID', "
        "or a vector file (.safetensors/.npy/.pt/.gguf) or folder",
    )
    p.add_argument("--layer", nargs="+", required=True, help="block indices or ranges to try (12 or 10-14)")
    p.add_argument("--alpha", nargs="+", type=finite_float, required=True, help="strengths to try at each layer")
    p.add_argument("--relative", action="store_true", help="read each alpha as a fraction of the layer's median residual norm")
    p.add_argument(
        "--positions", choices=("all", "prompt", "generated"), default="all",
        help="tokens steered: all, the prompt's or the generated ones (default %(default)s)",
    )
    p.add_argument("--trait", required=True, help="what the judge looks for, e.g. 'speaks like a pirate'")
    p.add_argument("--prompted", metavar="SYSTEM_PROMPT", help="also score the unsteered model under this system prompt (the prompted baseline)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", action="append", help="a held-out question (repeatable)")
    group.add_argument("--prompts", help="file of held-out questions: one per line, or JSON/JSONL with 'question' (default: 3 built-in ones)")
    p.add_argument("--trait-rubric", default="trait", help=f"rubric for the trait: {', '.join(BUILTIN)} or a file (default %(default)s)")
    p.add_argument("--coherence-rubric", default="coherence", help="rubric for coherence: a built-in name or a file (default %(default)s)")
    p.add_argument(
        "--min-coherence", type=finite_float, default=DEFAULT_MIN_COHERENCE,
        help="lowest mean coherence a recommended cell may have, 0-100 (default %(default)s)",
    )
    p.add_argument("--output-dir", metavar="DIR", help="where cells, table and report go (default $ARTIFACTS_DIR/eval/<model>/<vector>)")
    p.add_argument("--no-report", action="store_true", help="write the table only, no HTML report (it needs plotly)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG figure (it needs Chrome/Chromium)")
    add_generation_args(p, system=False)
    add_judge_args(p)
    p.set_defaults(handler=_cmd_eval)
