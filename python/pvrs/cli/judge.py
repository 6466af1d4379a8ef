"""`pvrs judge`: score saved answers 0-100 with a rubric, by an OpenAI-compatible endpoint
or a local model, and write them in the `--scores` format `pvrs extract` reads. An answer
the judge gives no score (a `REFUSAL`, or no number) has no row there: `pvrs extract
--scores` drops it as unscored."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pvrs.cli.common import (
    add_engine_args,
    bounded_int,
    check_writable,
    float_in,
    positive_int,
    vllm_config,
    writing,
)
from pvrs.errors import InputError

if TYPE_CHECKING:
    from pvrs.judge import Judge, ScoreCache

MAX_TIMEOUT, MAX_RETRIES = 86400.0, 100  # a day per reply; 2**100 backoffs would never end

# `--preset`: pvrs's defaults, or Anthropic persona_vectors' settings where they differ.
PERSONA_VECTORS = "persona_vectors"
PRESETS = ("pvrs", PERSONA_VECTORS)

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


def make_judge(args: argparse.Namespace) -> Judge:
    """The judge the `add_judge_args` flags describe (loads a local judge model)."""
    from pvrs.judge.endpoint import MODEL_ENV, PERSONA_VECTORS_REQUEST, EndpointJudge

    if not args.local:
        request: dict[str, object] = {}
        if args.preset == PERSONA_VECTORS:
            if args.no_logprobs:
                raise InputError(
                    f"--preset {PERSONA_VECTORS} reads the top logprobs of one reply token, as persona_vectors does; "
                    "drop --no-logprobs or the preset"
                )
            request = PERSONA_VECTORS_REQUEST
        return EndpointJudge.from_env(
            args.judge_url, args.judge_model, args.api_key,
            concurrency=args.concurrency, timeout=args.timeout, retries=args.retries, logprobs=not args.no_logprobs,
            **request,
        )
    if args.judge_url:
        raise InputError("pass either --local or --judge-url, not both")
    from rich.console import Console

    from pvrs.engines import models
    from pvrs.judge.local import LocalJudge

    name = args.judge_model or os.environ.get(MODEL_ENV) or models.DEFAULT_MODEL
    vllm = vllm_config(args, model=name)
    if vllm is not None:
        from pvrs.judge.vllm_judge import VllmJudge

        return VllmJudge(vllm, models.canonical_model_name(name))
    with Console(stderr=True).status(f"loading judge {name}"):
        model, tokenizer = models.load(name, dtype=args.dtype, device=args.device)
    return LocalJudge(model, tokenizer, models.canonical_model_name(name), batch_size=args.judge_batch_size)


def release(judge: Judge) -> None:
    """Free the engine a judge holds (a judge on vLLM), so that another can start; it starts
    again if asked more."""
    close = getattr(judge, "close", None)
    if close is not None:
        close()


def add_judge_args(p: argparse.ArgumentParser) -> None:
    """The judge flags shared by `pvrs judge` and `pvrs eval`; a local judge runs on the
    command's --device and --dtype."""
    from pvrs.engines.models import DEFAULT_MODEL
    from pvrs.judge.cache import CACHE_ENV, CACHE_NAME
    from pvrs.judge.endpoint import KEY_ENV, MODEL_ENV, URL_ENV
    from pvrs.judge.numbers import MODES

    api = p.add_argument_group("judge (an OpenAI-compatible chat-completions endpoint, or --local)")
    api.add_argument("--judge-url", help=f"API base, e.g. http://localhost:8000/v1 (default ${URL_ENV})")
    api.add_argument(
        "--judge-model",
        help=f"model name the endpoint serves, or with --local a HF id, folder or built-in (default ${MODEL_ENV}; "
        f"with --local, else {DEFAULT_MODEL})",
    )
    api.add_argument("--api-key", help=f"bearer token (default ${KEY_ENV}; none if unset)")
    api.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once (default %(default)s)")
    api.add_argument("--timeout", type=float_in(0, MAX_TIMEOUT, open_below=True), default=60.0, help="seconds to wait for one reply (default %(default)s)")
    api.add_argument(
        "--retries", type=bounded_int(0, MAX_RETRIES), default=5,
        help="retries after a 429, 5xx, timeout or dropped connection, with exponential backoff (default %(default)s)",
    )
    api.add_argument(
        "--no-logprobs", action="store_true",
        help="ask the endpoint for the number only, not its top logprobs (for servers that refuse logprobs)",
    )
    api.add_argument(
        "--local", action="store_true",
        help="run --judge-model here, on transformers or with --engine vllm on vLLM (score: probability-weighted "
        "mean over the number tokens of the first reply token)",
    )
    api.add_argument("--judge-batch-size", type=positive_int, default=8, help="prompts per forward pass of a --local judge (default %(default)s)")
    api.add_argument("--cache", metavar="FILE", help=f"score cache (default ${CACHE_ENV}/{CACHE_NAME}, else beside the output)")
    api.add_argument(
        "--preset", choices=PRESETS, default="pvrs",
        help=f"{PERSONA_VECTORS}: ask the endpoint as Anthropic's persona_vectors judge does (1 token, seed 0; pvrs: "
        "4 tokens, no seed) and, in `pvrs trait`, sample as it does (top-p 1, 1000 new tokens) (default %(default)s)",
    )
    api.add_argument("--no-cache", action="store_true", help="neither read nor write the score cache")
    api.add_argument(
        "--judge-mode", choices=MODES,
        help="how the rubric (in eval and trait: the trait rubric) is scored, as persona_vectors' judge: 0-100, 0-10 (the "
        "digits' weighted mean, x10) or yes/no (100 x the probability of YES); default: what the rubric file says "
        "(judge_mode or eval_type), else 0-100",
    )


def cache_path(args: argparse.Namespace, beside: Path) -> Path | None:
    """The score cache file the flags choose (None: --no-cache); by default in
    $PVRS_CACHE_DIR or the folder of `beside`. Checked writable, so that commands can call
    it before slow work: the cache is first written after the judge's first reply."""
    from pvrs.judge.cache import default_cache_path

    if args.no_cache:
        if args.cache:
            raise InputError("pass either --cache FILE or --no-cache, not both")
        return None
    path = Path(args.cache) if args.cache else default_cache_path(beside)
    check_writable("--cache", path)
    return path


def score_cache(args: argparse.Namespace, beside: Path) -> ScoreCache | None:
    """The cache `cache_path` names, opened."""
    from pvrs.judge import ScoreCache

    path = cache_path(args, beside)
    return None if path is None else ScoreCache(path)


def _check_apart(output: Path, cache: Path | None, inputs: Iterable[str]) -> None:
    """The scores file and the cache must be neither an answers input (the next run would
    read them as answers: an input file, or a .jsonl file in an input folder) nor one
    file: writing either would destroy the other."""
    for what, path in (("--output", output), ("the score cache", cache)):
        if path is None:
            continue
        target = path.resolve()
        for spec in inputs:
            source = Path(spec).resolve()
            if target == source:
                raise InputError(f"{what} {path} is the answers file {spec}: writing it would destroy the answers; "
                                 "pass another --output or --cache")
            if source.is_dir() and target.suffix == ".jsonl" and target.is_relative_to(source):
                raise InputError(f"{what} {path} is inside the answers folder {spec}: the next run would read it as "
                                 "answers; pass another --output or --cache")
    if cache is not None and output.resolve() == cache.resolve():
        raise InputError(f"--output {output} is also the score cache; pass another --output or --cache")


def write_scores(path: Path, scores: Iterable[tuple[str, str, float | None]], rubric: str, judge_id: str) -> int:
    """`(persona_id, qid, score)` rows in the `--scores` format, written atomically; an
    answer with no score gets no row. Returns how many had none."""
    from pvrs.store import atomic_write_bytes

    rows: list[dict[str, object]] = []
    unscored = 0
    for pid, qid, score in scores:
        if score is None:
            unscored += 1
        else:
            rows.append({"persona_id": pid, "qid": qid, "score": score, "rubric": rubric, "judge": judge_id})
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return unscored


def unscored_note(n: int) -> str:
    """The report's clause on answers the judge gave no score (empty when none)."""
    return f"; {n} answers could not be scored (REFUSAL or no number)" if n else ""


def _cmd_judge(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pvrs.judge import judge_answers, load_rubric, read_answers
    from pvrs.judge.numbers import ASKED

    output = Path(args.output)
    if output.suffix.lower() != ".jsonl":  # `pvrs extract --scores` reads a file by its suffix
        raise InputError(f"--output {output}: the scores file is JSON lines; name it .jsonl, e.g. {output.with_suffix('.jsonl')}")
    check_writable("--output", output)
    if args.engine != "hf" and not args.local:
        raise InputError(f"--engine {args.engine} runs a --local judge; add --local (or drop --engine)")
    rubric = load_rubric(args.rubric, mode=args.judge_mode)
    answers = read_answers(args.answers)
    if rubric.needs_trait:
        traits = _traits(args, [a.persona_id for a in answers])
        answers = [replace(a, trait=traits[a.persona_id]) for a in answers]
    _check_apart(output, cache_path(args, output), args.answers)  # before the cache is opened: it may be an input
    cache = score_cache(args, output)
    judge = make_judge(args)
    console = Console(stderr=True)
    cached = 0
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task(f"judging ({rubric.name})", total=len(answers))

        def tick(_i: int, _score: float | None, from_cache: bool) -> None:
            nonlocal cached
            cached += from_cache
            progress.advance(task)

        scores = judge_answers(judge, rubric, answers, cache, on_score=tick)
    with writing(output):
        unscored = write_scores(output, ((a.persona_id, a.qid, s) for a, s in zip(answers, scores, strict=True)),
                                rubric.name, judge.id)
    scored = [s for s in scores if s is not None]
    mean = f"mean {rubric.name} score {sum(scored) / len(scored):.1f}" if scored else f"no {rubric.name} score"
    hint = f"; none could: check that the rubric asks for {ASKED[rubric.scoring]} only" if scores and not scored else ""
    console.print(
        f"pvrs judge: {len(scores)} answers ({cached} from the cache), {mean}{unscored_note(unscored)}{hint}; "
        f"wrote {output} (pass it to `pvrs extract --scores`)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.engines.models import DTYPES
    from pvrs.extraction.inputs import VARIANTS
    from pvrs.judge.rubrics import BUILTIN

    p = sub.add_parser(
        "judge",
        help="score answers 0-100 with an LLM judge; writes the --scores file pvrs extract reads",
        description="Score saved answers (the generations `pvrs extract --generate` saves, or JSONL "
        "rows of persona_id, qid, question, answer) 0-100 with a rubric prompt, by an "
        "OpenAI-compatible endpoint or a local model, and write persona_id/qid/score rows for "
        "`pvrs extract --scores`. Scores are cached, so a rerun asks nothing twice. An answer the "
        "judge gives no score (REFUSAL, or no number) is counted and left out of the file.",
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
    add_judge_args(p)
    p.add_argument("--device", default="auto", help="device of a --local judge: cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="dtype of a --local judge (default auto: bfloat16 on GPU, float32 on CPU)")
    add_engine_args(p, "a --local judge (vLLM: one token per answer, its logprobs)")
    p.set_defaults(handler=_cmd_judge)
