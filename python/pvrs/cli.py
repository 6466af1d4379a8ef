"""The `pvrs` command line. Each sub-command is a small `_cmd_*` function; user mistakes
(`PvrsError`) print one line on stderr and exit 2, nothing else is caught."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pvrs.errors import InputError, PvrsError

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pvrs import doctor

    info = doctor.report()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        doctor.print_report(info)
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, native build, devices, built-in model, paths")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_doctor)


def _cmd_extract(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pvrs import inputs, models
    from pvrs.extract import SampleSource, extract
    from pvrs.generate import SamplingConfig, load_scores
    from pvrs.paths import activations_dir
    from pvrs.report import print_extraction_summary

    console = Console(stderr=True)
    if args.dataset and (args.personas or args.qa):
        raise InputError("--dataset replaces --personas/--qa; give one or the other")
    if args.dataset:
        personas, qa = inputs.load_dataset_dir(args.dataset)
    else:
        personas, qa = inputs.load_personas(args.personas), inputs.load_qa(args.qa)
    personas = inputs.shard(inputs.select_personas(personas, args.persona_id, args.sample_size), args.shard)
    scores = load_scores(args.scores) if args.scores else None
    root = Path(args.output_dir) if args.output_dir else activations_dir()
    model_name = models.canonical_model_name(args.model)
    console.print(f"[bold]pvrs extract[/]: {len(personas)} personas x {len(args.variants)} variants, model {model_name}")
    model, tokenizer = models.load(
        args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
        revision=args.revision, trust_remote_code=args.trust_remote_code,
    )
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed) if args.generate else None
    source = SampleSource(
        qa, n_train=args.n_train, qa_type=args.qa_type, generate=sampling,
        generations_dir=root.parent / "generations" / models.model_dir_name(model_name),
        scores=scores, min_score=args.min_score,
    )
    result = extract(
        model, tokenizer, personas, source,
        variants=args.variants, mask_strategies=args.mask_strategy, batch_tokens=args.batch_tokens,
        padding_side=args.padding_side, prefix_reuse=not args.no_prefix_reuse, model_name=model_name,
        save_to=root, force=args.force, save_samples=args.save_samples, revision=args.revision,
        verbose=args.verbose, console=console,
    )
    print_extraction_summary(console, result, root)
    return 1 if result.count("failed") else 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    from pvrs.engine import DEFAULT_BATCH_TOKENS
    from pvrs.extract import DEFAULT_MIN_SCORE
    from pvrs.inputs import QA_TYPES, VARIANTS
    from pvrs.models import DEFAULT_MODEL, DTYPES

    p = sub.add_parser(
        "extract",
        help="extract persona vectors (every layer) into the artifact store",
        description="Run each persona's QA conversations through the model and save the mean "
        "residual-stream activation per layer, for each prompt variant and mask strategy. "
        "With no arguments: the built-in personas on the built-in model.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--personas", metavar="FILE", help="personas (.jsonl/.json/.parquet); default: built-in demo set")
    data.add_argument("--qa", metavar="FILE", help="QA pairs (.jsonl/.json/.parquet); default: built-in demo set")
    data.add_argument("--dataset", metavar="DIR", help="folder with personas.* and qa.* (or a saved DatasetDict)")
    data.add_argument("--persona-id", nargs="+", metavar="ID", help="only these personas (baseline_assistant included)")
    data.add_argument("--sample-size", type=int, metavar="N", help="only the first N personas")
    data.add_argument("--n-train", type=int, metavar="N", help="first N train-split QA rows per persona")
    data.add_argument("--qa-type", choices=QA_TYPES, default="all")
    data.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    data.add_argument("--mask-strategy", nargs="+", default=["answer_mean"], metavar="S", help="strategies, or 'all' (default: answer_mean)")
    data.add_argument("--scores", metavar="FILE", help="judge scores (persona_id, qid, score); keep samples scoring >= --min-score")
    data.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE)
    gen = p.add_argument_group("answer generation (--generate)")
    gen.add_argument("--generate", action="store_true", help="let the model answer the questions in persona, save the conversations, extract from them")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    gen.add_argument("--top-p", type=float, default=0.9)
    gen.add_argument("--seed", type=int, default=0)
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=DEFAULT_MODEL, help=f"HF id, local folder or built-in name (default {DEFAULT_MODEL})")
    mod.add_argument("--revision")
    mod.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    mod.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    mod.add_argument("--device-map", help="e.g. 'auto' to spread a large model over several GPUs")
    mod.add_argument("--trust-remote-code", action="store_true")
    run = p.add_argument_group("run")
    run.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per forward batch")
    run.add_argument("--padding-side", choices=["right", "left"], default="right")
    run.add_argument("--no-prefix-reuse", action="store_true", help="re-encode the persona prompt for every question")
    run.add_argument("--output-dir", metavar="DIR", help="store root (default $ARTIFACTS_DIR/activations)")
    run.add_argument("--force", action="store_true", help="recompute personas already saved")
    run.add_argument("--save-samples", action="store_true", help="also save per-sample vectors")
    run.add_argument("--shard", metavar="I/N", help="only personas whose index mod N is I (0-based)")
    run.add_argument("--verbose", action="store_true", help="preview each persona's masked tokens")
    p.set_defaults(handler=_cmd_extract)


# ---- steering: steer, chat, monitor, export ------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from pvrs.models import DEFAULT_MODEL, DTYPES

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"HF id, local folder or built-in (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda when visible), cpu, cuda, cuda:1, ..."
    )
    p.add_argument("--dtype", default="auto", choices=DTYPES)


def _add_model_and_store_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument(
        "--variant",
        default="templated",
        help="prompt variant of stored vectors (default templated)",
    )
    p.add_argument("--mask-strategy", default="answer_mean", help="mask strategy of stored vectors")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (with --temperature > 0)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--system", default=None, help="system prompt (default: the template's own)")


def _cmd_steer(args: argparse.Namespace) -> int:
    from pvrs.steer_commands import run_steer

    return run_steer(args)


def _add_steer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "steer",
        help="generate with and without steering, side by side",
        description="Generate replies with a persona direction (persona minus baseline) or a "
        "vector file added at the chosen layers, next to the unsteered reply.",
    )
    _add_model_and_store_args(p)
    p.add_argument("--persona-id", help="steer towards this stored persona (minus the baseline)")
    p.add_argument(
        "--vector", help="or: a vector file (.safetensors/.npy/.gguf) or 'assistant-axis'"
    )
    p.add_argument(
        "--layer", nargs="+", required=True, help="block indices or ranges (12 or 10-14)"
    )
    p.add_argument(
        "--alpha", nargs="+", type=float, required=True, help="one or more strengths to sweep"
    )
    p.add_argument(
        "--relative",
        action="store_true",
        help="read each alpha as a fraction of the layer's median residual norm (start at 0.4)",
    )
    p.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", action="append", help="a user prompt (repeatable)")
    group.add_argument(
        "--prompts", help="file of prompts: one per line, or JSON/JSONL with 'question'"
    )
    _add_generation_args(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_steer)


def _cmd_chat(args: argparse.Namespace) -> int:
    from pvrs.steer_commands import run_chat

    return run_chat(args)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat with steering and capping (reads stdin, one message per line)",
    )
    _add_model_and_store_args(p)
    p.add_argument(
        "--steer",
        action="append",
        metavar="VECTOR:LAYER:ALPHA",
        help="add ALPHA x VECTOR (persona id, vector file or assistant-axis) at LAYER; repeatable",
    )
    p.add_argument(
        "--cap",
        action="append",
        metavar="VECTOR:LAYER[:TAU]",
        help="cap the projection on VECTOR at LAYER to TAU (default: calibrated); repeatable",
    )
    p.add_argument(
        "--cap-side",
        choices=("upper", "lower"),
        default="upper",
        help="upper: projections <= tau; lower: a floor (use with assistant-axis)",
    )
    p.add_argument(
        "--cap-quantile",
        type=float,
        default=None,
        help="quantile for a calibrated tau (default 0.99 upper, 0.01 lower)",
    )
    _add_generation_args(p)
    p.set_defaults(handler=_cmd_chat)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pvrs.steer_commands import run_monitor

    return run_monitor(args)


def _add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="projection of each conversation turn on an axis (drift)")
    _add_model_and_store_args(p)
    p.add_argument("--axis", required=True, help="persona id, vector file or assistant-axis")
    p.add_argument("--conversation", required=True, help="JSON/JSONL list of {role, content}")
    p.add_argument("--layer", nargs="+", help="layers to monitor (default: the middle block)")
    p.add_argument(
        "--plot",
        help="plot file (.html, or .png/.svg via kaleido); default <conversation>.monitor.html",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write a plot")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_monitor)


def _cmd_export(args: argparse.Namespace) -> int:
    from pvrs.steer_commands import run_export

    return run_export(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a llama.cpp control-vector GGUF")
    _add_model_and_store_args(p)
    p.add_argument("--format", default="gguf", choices=("gguf",))
    p.add_argument(
        "--persona-id", help="export this stored persona's direction (minus the baseline)"
    )
    p.add_argument(
        "--vector", help="or: a vector file (.safetensors/.npy/.gguf) or 'assistant-axis'"
    )
    p.add_argument(
        "--layer", nargs="+", required=True, help="blocks >= 1 (llama.cpp cannot steer block 0)"
    )
    p.add_argument("--alpha", type=float, default=1.0, help="scale baked into the file (default 1)")
    p.add_argument(
        "--model-hint", help="architecture name in the file (default: the model's model_type)"
    )
    p.add_argument("--out", required=True, help="output .gguf path")
    p.set_defaults(handler=_cmd_export)


def _cmd_contrast(args: argparse.Namespace) -> int:
    from pvrs.steer_commands import run_contrast

    return run_contrast(args)


def _add_contrast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contrast",
        help="contrastive vector: mean activation of positive minus negative responses",
        description="Per layer, the mean over positive responses of each response's mean "
        "activation over its tokens (--mask-strategy), minus the same for the negative ones. "
        "Files are JSON/JSONL rows {question, answer, system?}.",
    )
    _add_model_args(p)
    p.add_argument("--positive", required=True, help="responses showing the trait")
    p.add_argument("--negative", required=True, help="responses without it")
    p.add_argument("--mask-strategy", default="answer_mean", help="tokens averaged per response")
    p.add_argument(
        "--out", required=True, help="output .safetensors (tensor 'activations', (L, H))"
    )
    p.set_defaults(handler=_cmd_contrast)


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_doctor,
        _add_extract,
        _add_steer,
        _add_chat,
        _add_monitor,
        _add_export,
        _add_contrast,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except PvrsError as exc:
        print(f"pvrs {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pvrs {args.command}: interrupted; artifacts saved so far are intact", file=sys.stderr)
        return 130
