"""`pvrs judge`: score saved answers 0-100 with a rubric, by an OpenAI-compatible endpoint
or a local model, and write them in the `--scores` format `pvrs extract` reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pvrs.cli.common import add_model_args, check_writable, finite_float, positive_int, writing
from pvrs.errors import InputError

if TYPE_CHECKING:
    from pvrs.judge import Judge

# The baseline persona has no system prompt: the role its answers are judged against.
BASELINE_ROLE = "a helpful AI assistant (no persona)"


def _traits(args: argparse.Namespace, persona_ids: list[str]) -> dict[str, str]:
    """The {trait} text per persona: --trait for all, else each persona's own prompt."""
    if args.trait:
        return dict.fromkeys(persona_ids, args.trait)
    from pvrs.extraction.inputs import load_personas

    by_id = {p.id: p for p in load_personas(args.personas)}
    out: dict[str, str] = {}
    for pid in dict.fromkeys(persona_ids):
        if pid not in by_id:
            where = args.personas or "the built-in persona set"
            raise InputError(f"persona {pid!r} is not in {where}; pass --personas FILE or --trait TEXT")
        out[pid] = by_id[pid].system_prompt(args.variant) or BASELINE_ROLE
    return out


def _judge(args: argparse.Namespace) -> Judge:
    from pvrs.judge.endpoint import EndpointJudge

    if not args.local:
        return EndpointJudge.from_env(
            args.judge_url, args.judge_model, args.api_key,
            concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
        )
    if args.judge_url:
        raise InputError("pass either --local (with --model) or --judge-url, not both")
    from pvrs.engines import models
    from pvrs.judge.local import LocalJudge

    model, tokenizer = models.load(args.model, dtype=args.dtype, device=args.device)
    return LocalJudge(model, tokenizer, models.canonical_model_name(args.model), batch_size=args.batch_size)


def _cmd_judge(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pvrs.judge import ScoreCache, judge_answers, load_rubric, read_answers
    from pvrs.judge.cache import default_cache_path
    from pvrs.store import atomic_write_bytes

    output = Path(args.output)
    check_writable("--output", output)
    rubric = load_rubric(args.rubric)
    answers = read_answers(args.answers)
    if rubric.needs_trait:
        traits = _traits(args, [a.persona_id for a in answers])
        answers = [replace(a, trait=traits[a.persona_id]) for a in answers]
    cache = None if args.no_cache else ScoreCache(Path(args.cache) if args.cache else default_cache_path(output))
    judge = _judge(args)
    console = Console(stderr=True)
    cached = 0
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task(f"judging ({rubric.name})", total=len(answers))

        def tick(_i: int, _score: float, from_cache: bool) -> None:
            nonlocal cached
            cached += from_cache
            progress.advance(task)

        scores = judge_answers(judge, rubric, answers, cache, on_score=tick)
    rows = [
        {"persona_id": a.persona_id, "qid": a.qid, "score": s, "rubric": rubric.name, "judge": judge.id}
        for a, s in zip(answers, scores, strict=True)
    ]
    with writing(output):
        atomic_write_bytes(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    mean = sum(scores) / len(scores) if scores else float("nan")
    console.print(
        f"pvrs judge: {len(scores)} answers ({cached} from the cache), mean {rubric.name} score {mean:.1f}; "
        f"wrote {output} (pass it to `pvrs extract --scores`)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.extraction.inputs import VARIANTS
    from pvrs.judge.cache import CACHE_ENV, CACHE_NAME
    from pvrs.judge.endpoint import KEY_ENV, MODEL_ENV, URL_ENV
    from pvrs.judge.rubrics import BUILTIN

    p = sub.add_parser(
        "judge",
        help="score answers 0-100 with an LLM judge; writes the --scores file pvrs extract reads",
        description="Score saved answers (the generations `pvrs extract --generate` saves, or JSONL "
        "rows of persona_id, qid, question, answer) 0-100 with a rubric prompt, by an "
        "OpenAI-compatible endpoint or a local model, and write persona_id/qid/score rows for "
        "`pvrs extract --scores`. Scores are cached, so a rerun asks nothing twice.",
    )
    p.add_argument("answers", nargs="+", metavar="FILE|DIR", help="answer files, or folders of .jsonl answer files")
    p.add_argument("--output", "-o", default="scores.jsonl", help="scores file to write (default %(default)s)")
    p.add_argument(
        "--rubric", default="trait",
        help=f"built-in rubric ({', '.join(BUILTIN)}) or a rubric file (.yaml/.json/.txt with {{question}}, "
        "{answer} and optionally {trait}) (default %(default)s)",
    )
    p.add_argument("--trait", help="the text for {trait}: a trait, or a role for the role rubric (default: each persona's prompt)")
    p.add_argument("--personas", metavar="FILE", help="personas whose prompts fill {trait} without --trait (default: the built-in set)")
    p.add_argument("--variant", choices=VARIANTS, default="templated", help="which persona prompt fills {trait} (default %(default)s)")
    api = p.add_argument_group("endpoint judge (OpenAI-compatible chat completions)")
    api.add_argument("--judge-url", help=f"API base, e.g. http://localhost:8000/v1 (default ${URL_ENV})")
    api.add_argument("--judge-model", help=f"model name the endpoint serves (default ${MODEL_ENV})")
    api.add_argument("--api-key", help=f"bearer token (default ${KEY_ENV}; none if unset)")
    api.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once (default %(default)s)")
    api.add_argument("--timeout", type=finite_float, default=60.0, help="seconds to wait for one reply (default %(default)s)")
    api.add_argument(
        "--retries", type=int, default=5,
        help="retries after a 429, 5xx, timeout or dropped connection, with exponential backoff (default %(default)s)",
    )
    loc = p.add_argument_group("local judge (a transformers model)")
    loc.add_argument("--local", action="store_true", help="judge with the local --model instead of an endpoint")
    add_model_args(loc)
    loc.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass (default %(default)s)")
    cache = p.add_argument_group("cache")
    cache.add_argument("--cache", metavar="FILE", help=f"score cache (default ${CACHE_ENV}/{CACHE_NAME}, else beside --output)")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the score cache")
    p.set_defaults(handler=_cmd_judge)
