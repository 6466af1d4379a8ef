"""`pvrs trait`: a trait vector end to end from a persona_vectors trait file (or one a
generator model writes from a description, `--describe`): answers under the positive and
negative system prompts, judged; the pairs past the thresholds; the difference vectors; and
`pvrs eval` on them. Every step is saved under one folder and reused by a rerun."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.cli.common import (
    DEFAULT_TOP_P,
    add_engine_args,
    add_generation_args,
    add_model_args,
    bounded_int,
    check_writable,
    positive_int,
    score_threshold,
    vllm_config,
    writing,
)
from pvrs.cli.evaluate import add_grid_args, check_grid_args, evaluate
from pvrs.cli.judge import (
    PERSONA_VECTORS,
    add_judge_args,
    make_judge,
    release,
    score_cache,
    unscored_note,
    write_scores,
)
from pvrs.errors import InputError
from pvrs.jsonio import read_json

if TYPE_CHECKING:
    from rich.console import Console

    from pvrs.extraction.generate import SamplingConfig
    from pvrs.extraction.inputs import QAPair
    from pvrs.judge import Judge, Rubric, ScoreCache
    from pvrs.judge.describe import Generator
    from pvrs.judge.trait import TraitFile

# pvrs's sampling of trait answers (persona_vectors: temperature 1 too, top_p 1, 1000 tokens).
MAX_NEW_TOKENS, TEMPERATURE = 256, 1.0
GENERATE_TIMEOUT = 600.0  # seconds a generator may take to write a whole trait file
MAX_ATTEMPTS, MAX_COUNT, MAX_DESCRIBE_TOKENS = 20, 1000, 1 << 20


def _output_dir(args: argparse.Namespace, name: str) -> Path:
    from pvrs.analysis.tables import slug
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.paths import artifacts_dir

    if args.output_dir:
        return Path(args.output_dir)
    return artifacts_dir() / "traits" / model_dir_name(canonical_model_name(args.model)) / slug(name)


def _eval_questions(args: argparse.Namespace, trait: TraitFile) -> list[str]:
    """--eval-questions: a JSON file with `questions` (a trait file: persona_vectors'
    trait_data_eval set, or the questions alone) or a questions file; default the trait file's
    held-out `eval_questions`, else its own questions."""
    from pvrs.cli.steering_run import read_prompts
    from pvrs.judge.trait import questions_of

    if args.eval_questions is None:
        return trait.eval_questions or trait.questions
    path = Path(args.eval_questions)
    if path.suffix.lower() == ".json":
        try:
            data = read_json(path)
        except InputError:
            data = None  # read_prompts names the problem
        if isinstance(data, dict) and "questions" in data:
            return questions_of(data, f"--eval-questions {path}")
    return read_prompts(argparse.Namespace(prompt=None, prompts=str(path)), "--eval-questions")


def _judge_all(
    judge: Judge, trait: TraitFile, answers: dict[str, list[QAPair]], rubrics: dict[str, Rubric],
    cache: ScoreCache | None, console: Console,
) -> dict[str, dict[tuple[str, str], float | None]]:
    """Scores per rubric name, keyed by (persona, qid) (None: the judge gave none); cached
    scores are not asked again."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pvrs.judge import Answer, judge_answers

    items = [Answer(pid, r.qid, r.question, r.answer, trait.name) for pid, rows in answers.items() for r in rows]
    out: dict[str, dict[tuple[str, str], float | None]] = {}
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("judging", total=len(items) * len(rubrics))
        for name, rubric in rubrics.items():
            scores = judge_answers(judge, rubric, items, cache, on_score=lambda *_: progress.advance(task))
            out[name] = {(a.persona_id, a.qid): s for a, s in zip(items, scores, strict=True)}
    return out


def _write_scores(out: Path, scores: dict[str, dict[tuple[str, str], float | None]], judge_id: str) -> int:
    """scores/<rubric>.jsonl in the --scores format `pvrs extract` reads; returns how many
    answers had no score (counted once per answer, whichever rubric missed)."""
    (out / "scores").mkdir(parents=True, exist_ok=True)
    for name, by_key in scores.items():
        write_scores(out / "scores" / f"{name}.jsonl", ((pid, qid, s) for (pid, qid), s in by_key.items()), name, judge_id)
    return len({key for by_key in scores.values() for key, s in by_key.items() if s is None})


def _generator(args: argparse.Namespace, judge: Judge) -> tuple[Generator, str]:
    """The model that writes a --describe trait file, and its name for messages: --generator
    (an endpoint URL, with --generator-model or the judge's model; else a local model),
    by default the judge itself."""
    from dataclasses import replace

    from rich.console import Console

    from pvrs.judge.describe import endpoint_generator, local_generator
    from pvrs.judge.endpoint import KEY_ENV, EndpointJudge, check_url
    from pvrs.judge.local import LocalJudge

    spec = args.generator
    if spec is None:
        if isinstance(judge, EndpointJudge):
            return (endpoint_generator(replace(judge, timeout=max(judge.timeout, GENERATE_TIMEOUT)), args.describe_max_tokens),
                    f"generator {judge.model}")
        if isinstance(judge, LocalJudge):
            return local_generator(judge.model, judge.tokenizer, args.describe_max_tokens), f"generator {judge.name}"
        raise InputError(f"judge {judge.id} cannot write a trait file; pass --generator URL or MODEL")
    if "://" in spec:
        check_url(spec, "--generator")
        model = args.generator_model or (judge.model if isinstance(judge, EndpointJudge) else None)
        if not model:
            raise InputError(f"--generator {spec}: pass --generator-model NAME, the model the endpoint serves")
        endpoint = EndpointJudge(spec, model, args.api_key or os.environ.get(KEY_ENV), timeout=max(args.timeout, GENERATE_TIMEOUT),
                                 retries=args.retries)
        return endpoint_generator(endpoint, args.describe_max_tokens), f"generator {model} at {endpoint.endpoint}"
    if args.generator_model:
        raise InputError(f"--generator-model names a model an endpoint serves; --generator {spec} is a local model, not a URL")
    from pvrs.engines import models

    with Console(stderr=True).status(f"loading generator {spec}"):
        model, tokenizer = models.load(spec, dtype=args.dtype, device=args.device)
    return local_generator(model, tokenizer, args.describe_max_tokens), f"generator {models.canonical_model_name(spec)}"


def _describe(args: argparse.Namespace, name: str, out: Path, judge: Judge, console: Console) -> Path:
    """Have the generator write the trait file `<out>/<name>.json` (an existing one is kept
    unless --force) and return its path."""
    from pvrs.analysis.tables import slug
    from pvrs.judge.describe import Counts, check_new, describe_trait, load_prompt, save_trait_file

    path = out / f"{slug(name)}.json"
    check_new(path, args.force)
    counts = Counts(args.describe_pairs, args.describe_questions, args.describe_eval_questions)
    prompt = load_prompt(args.describe_prompt)
    generator, who = _generator(args, judge)

    with console.status(f"{who} is writing the trait file for {name!r}") as status:
        # A failed attempt shows on the transient status line: only the final failure is printed.
        data = describe_trait(generator, args.describe, name, counts=counts, prompt=prompt, attempts=args.describe_attempts,
                              generator_name=who, on_attempt=lambda n, problems: status.update(
                                  f"{who}'s reply {n} was no valid trait file ({'; '.join(problems)[:80]}); asking again"))
    with writing(out):
        save_trait_file(data, path, force=args.force)
    console.print(f"pvrs trait: wrote the trait file {path} ({counts.pairs} instruction pairs, {counts.questions} questions, "
                  f"{counts.eval_questions} held out)")
    return path


def trait_sampling(args: argparse.Namespace) -> SamplingConfig:
    """The answers' sampling: the flags, or with `--preset persona_vectors` its pipeline's
    (eval_persona.py: top_p 1, 1000 new tokens, temperature 1, 0 for one answer per question).
    A flag set to another value than the preset's is refused, not silently replaced."""
    from pvrs.extraction.generate import SamplingConfig

    top_p, max_new_tokens, temperature = args.top_p, args.max_new_tokens, args.temperature
    if args.preset == PERSONA_VECTORS:
        wanted = {"--top-p": (top_p, DEFAULT_TOP_P, 1.0), "--max-new-tokens": (max_new_tokens, MAX_NEW_TOKENS, 1000),
                  "--temperature": (temperature, TEMPERATURE, 0.0 if args.samples == 1 else 1.0)}
        for flag, (given, default, value) in wanted.items():
            if given not in (default, value):
                raise InputError(f"--preset {PERSONA_VECTORS} samples with {flag} {value:g}; drop {flag} {given:g} or the preset")
        top_p, max_new_tokens, temperature = (value for _, _, value in wanted.values())
    return SamplingConfig(int(max_new_tokens), temperature, top_p, args.seed, args.batch_size)


def _cmd_trait(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pvrs.cli.steering_run import load_model
    from pvrs.engines.hooks import decoder_layers
    from pvrs.engines.models import canonical_model_name
    from pvrs.judge import load_rubric
    from pvrs.judge.describe import check_description
    from pvrs.judge.evaluation import EvalSetup
    from pvrs.judge.trait import (
        SIDES,
        difference_vectors,
        generate_all,
        load_trait_file,
        pairs,
        responses,
        summary,
        write_pairs,
    )
    from pvrs.steering.contrast import save_vector
    from pvrs.store import atomic_write_bytes
    from pvrs.store.layerspec import parse_layers

    if (args.trait_file is None) == (args.describe is None):
        raise InputError("pass a TRAIT_FILE, or --describe TEXT to have a generator model write one (not both)")
    if args.describe is not None:
        check_description(args.describe)
    trait = None if args.trait_file is None else load_trait_file(args.trait_file, args.name)
    name = trait.name if trait is not None else args.name or " ".join(args.describe.split())
    sampling = trait_sampling(args)
    out = _output_dir(args, name)
    check_writable("--output-dir", out, is_dir=True)
    cache = score_cache(args, out / "pairs.csv")  # a bad --cache fails now, not after generating
    if not args.no_eval:
        check_grid_args(args)
    coherence = load_rubric(args.coherence_rubric, "--coherence-rubric")
    vllm = vllm_config(args)
    judge = make_judge(args)
    console = Console(stderr=True)
    if trait is None:
        trait = load_trait_file(_describe(args, name, out, judge, console), args.name)
    eval_questions = None if args.no_eval else _eval_questions(args, trait)
    rubrics = {"trait": trait.rubric.with_mode(args.judge_mode), "coherence": coherence}
    model, tokenizer = load_model(args, vllm)  # on vLLM, the weightless skeleton until the vectors
    if not args.no_eval:  # a bad --layer / --cap fails now, not after generating and judging
        blocks = range(len(decoder_layers(model)))
        for flag, spec in [("--layer", args.layer)] + [(f, [c]) for f in ("--cap", "--band") for c in getattr(args, f[2:]) or []]:
            if spec:
                parse_layers(spec, blocks, flag)
    model_name = canonical_model_name(args.model)

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("answering", total=2 * len(trait.instructions) * len(trait.questions) * args.samples)
        answers = generate_all(model, tokenizer, trait, args.samples, sampling, out / "answers", model_name,
                               on_batch=lambda n: progress.advance(task, n), vllm=vllm)
    scores = _judge_all(judge, trait, answers, rubrics, cache, console)
    release(judge)  # a judge on vLLM frees the device for the next engine
    rows = pairs(trait, answers, scores)
    reasons = [p.drop_reason(args.min_trait_pos, args.max_trait_neg, args.min_coherence) for p in rows]
    chosen = [p for p, why in zip(rows, reasons, strict=True) if not why]
    with writing(out):
        unscored = _write_scores(out, scores, judge.id)
        write_pairs(rows, reasons, out / "pairs.csv")
        for side in SIDES:  # the kept answers, in the rows `pvrs contrast` reads
            data = "".join(json.dumps({"id": r.sample_id, "question": r.question, "answer": r.answer, "system": r.system},
                                      ensure_ascii=False) + "\n" for r in responses(trait, chosen, side))
            (out / "kept").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / "kept" / f"{side}.jsonl", data.encode())
    if vllm is not None:  # the activations are read with transformers
        model, tokenizer = load_model(args)
    vectors = difference_vectors(model, tokenizer, trait, chosen)
    thresholds = {"min_trait_pos": args.min_trait_pos, "max_trait_neg": args.max_trait_neg,
                  "min_coherence": args.min_coherence}
    meta = {"format": "pvrs-trait", "trait": trait.name, "model": model_name, "pairs": len(chosen), **thresholds}
    with writing(out):
        paths = {kind: str(save_vector(out / "vectors" / f"{kind}.safetensors", v, {**meta, "kind": kind}))
                 for kind, v in vectors.items()}
    record: dict[str, Any] = {**summary(trait, rows, reasons), "model": model_name,
                              "engine": "transformers" if vllm is None else "vllm", "judge": judge.id,
                              "thresholds": thresholds, "sampling": asdict(sampling), "vectors": paths}
    dropped = " (their pairs are dropped: see pairs.csv)" if unscored else ""
    console.print(f"pvrs trait {trait.name}: kept {len(chosen)} of {len(rows)} pairs{unscored_note(unscored)}{dropped}; "
                  f"wrote {out / 'vectors'}")
    if eval_questions is not None:
        setup = EvalSetup(eval_questions, trait.name, rubrics["trait"], rubrics["coherence"], sampling,
                          system_prompt=trait.system_prompt("pos", 0), positions=args.positions, schedule=args.schedule)
        record["eval"] = {}
        for kind in args.eval_vectors:
            result = evaluate(args, kind, vectors[kind], setup, judge, (model, tokenizer, model_name), out / "eval" / kind, console,
                              vllm)
            record["eval"][kind] = {k: result.get(k) for k in ("recommended", "recommended_cap") if k in result}
    with writing(out):
        atomic_write_bytes(out / "summary.json", json.dumps(record, indent=1, ensure_ascii=False).encode())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.judge.describe import DEFAULT_ATTEMPTS, MAX_TOKENS, Counts
    from pvrs.judge.trait import DEFAULT_THRESHOLD, VECTOR_KINDS

    p = sub.add_parser(
        "trait",
        help="a trait vector end to end from a persona_vectors trait file (or a description): generate, judge, filter, extract, eval",
        description="From a trait file in Anthropic's persona_vectors format (JSON: 'instruction' "
        "[{pos, neg}] system-prompt pairs, 'questions', and 'eval_prompt', a rubric with {question} "
        "and {answer}): answer every question under each positive and negative system prompt "
        "('You are a/an <trait> assistant. <pos>' / 'You are a helpful assistant. <neg>'), judge "
        "each answer for the trait (the file's rubric) and for coherence, keep the pairs whose "
        "positive answer shows the trait, negative answer does not and both are coherent, save "
        "the positive-minus-negative vectors (response mean, prompt mean, prompt last), and run "
        "`pvrs eval` on them. Answers, scores, pairs, vectors and eval cells are all saved under "
        "--output-dir; a rerun reuses them. With --describe TEXT instead of a file, a generator model "
        "first writes the trait file (instruction pairs, questions, held-out questions, rubric), checked "
        "and asked again when invalid.",
    )
    p.add_argument("trait_file", metavar="TRAIT_FILE", nargs="?",
                   help="a persona_vectors trait file (data_generation/trait_data_extract/<trait>.json); or --describe")
    p.add_argument("--name", help="the trait's name in the positive system prompts and the report (default: the file's "
                   "'name', else its stem; with --describe, the description)")
    d = p.add_argument_group("a trait file from a description (instead of TRAIT_FILE)")
    d.add_argument("--describe", metavar="TEXT", help="describe the trait (\"formal and professional\"): a generator model "
                   "writes the trait file, <output-dir>/<name>.json, and the pipeline runs on it")
    d.add_argument("--generator", metavar="URL|MODEL", help="who writes it: an OpenAI-compatible endpoint (API base URL) "
                   "or a local model (HF id, folder or built-in) (default: the judge)")
    d.add_argument("--generator-model", metavar="NAME", help="the model a --generator URL serves (default: --judge-model)")
    d.add_argument("--describe-prompt", metavar="FILE", help="the generation prompt, with {description} (and optionally "
                   "{name}, {pairs}, {questions}, {eval_questions}) (default: pvrs's, pvrs/data/describe_prompt.txt)")
    d.add_argument("--describe-attempts", type=bounded_int(1, MAX_ATTEMPTS), default=DEFAULT_ATTEMPTS,
                   help="replies asked for before giving up; each retry tells the model what was wrong (default %(default)s)")
    d.add_argument("--describe-pairs", type=bounded_int(1, MAX_COUNT), default=Counts.pairs,
                   help="instruction pairs to write (default %(default)s, as persona_vectors)")
    d.add_argument("--describe-questions", type=bounded_int(1, MAX_COUNT), default=Counts.questions,
                   help="extraction questions to write (default %(default)s)")
    d.add_argument("--describe-eval-questions", type=bounded_int(1, MAX_COUNT), default=Counts.eval_questions,
                   help="held-out evaluation questions to write, none among the extraction ones (default %(default)s)")
    d.add_argument("--describe-max-tokens", type=bounded_int(1, MAX_DESCRIBE_TOKENS), default=MAX_TOKENS,
                   help="the longest reply the generator may write (default %(default)s)")
    d.add_argument("--force", action="store_true", help="write the trait file over an existing one")
    add_model_args(p)
    p.add_argument("--output-dir", metavar="DIR", help="where every step goes (default $ARTIFACTS_DIR/traits/<model>/<trait>)")
    p.add_argument(
        "--samples", type=positive_int, default=10,
        help="answers per question and system prompt (default %(default)s, persona_vectors' n_per_question)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="questions generated at once (default %(default)s)")
    f = p.add_argument_group("pair filter (persona_vectors' generate_vec thresholds)")
    f.add_argument("--min-trait-pos", type=score_threshold, default=DEFAULT_THRESHOLD,
                   help="keep a pair when its positive answer's trait score is >= this (default %(default)s)")
    f.add_argument("--max-trait-neg", type=score_threshold, default=DEFAULT_THRESHOLD,
                   help="... and its negative answer's trait score is < this (default %(default)s)")
    p.add_argument("--coherence-rubric", default="coherence", help="rubric for coherence: a built-in name or a file (default %(default)s)")
    e = p.add_argument_group("evaluation of the vectors (`pvrs eval`)")
    e.add_argument("--no-eval", action="store_true", help="stop after saving the vectors (then no --layer/--alpha needed)")
    e.add_argument(
        "--eval-vectors", nargs="+", choices=VECTOR_KINDS, default=["response_mean"],
        help="which vectors to evaluate (default response_mean, the one persona_vectors steers with)",
    )
    e.add_argument(
        "--eval-questions", metavar="FILE",
        help="held-out questions: a trait file (persona_vectors' trait_data_eval/<trait>.json) or a questions "
        "file (default: the trait file's own questions, not held out)",
    )
    add_grid_args(p, min_coherence_help="keep a pair when both answers' coherence is >= this, 0-100; also the "
                  "lowest mean coherence a recommended eval cell may have (default %(default)s)")
    add_generation_args(p, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, system=False,
                        why="persona_vectors samples its extraction answers at temperature 1, seeded here")
    add_judge_args(p)
    add_engine_args(p, "the answers, the eval's steered answers (vLLM: each eval's grid in one batch) and a --local judge")
    p.set_defaults(handler=_cmd_trait)

