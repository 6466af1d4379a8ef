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


def _cmd_validate(args: argparse.Namespace) -> int:
    from pvrs.validation import validate

    report = validate(args.path, deep=args.deep)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for problem in report.problems:
            print(problem)
        print(report.summary())
    return 0 if report.ok else 1


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check an artifacts tree or variant folder (exit 0 clean, 1 with errors)",
        description="Check manifests, persona ids, tensor files and their headers; report every problem.",
    )
    p.add_argument("path", help="artifacts tree (e.g. artifacts/activations) or one variant folder")
    p.add_argument("--deep", action="store_true", help="also check sha256 and scan for NaN/Inf")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_validate)


def _cmd_import(args: argparse.Namespace) -> int:
    from pvrs.importers import import_pt
    from pvrs.models import canonical_model_name
    from pvrs.store import PersonaVectorStore

    store = PersonaVectorStore(
        canonical_model_name(args.model), root_dir=args.output, mask_strategy=args.mask_strategy
    )
    result = import_pt(
        args.files, store, args.variant, layout=args.layout, num_layers=args.num_layers
    )
    dropped = " (dropped the embedding row)" if result.source_layer_convention != "decoder_block_outputs" else ""
    print(
        f"imported {len(result.persona_ids)} vector(s) of ({result.num_layers}, {result.hidden_size})"
        f"{dropped} into {result.variant_dir}"
    )
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import persona vectors from other tools (.pt files) into the store",
        description="Import [L+1, d] (embedding row first) or [L, d] .pt tensors; persona id = file stem.",
    )
    p.add_argument("files", nargs="+", help=".pt files or folders of them")
    p.add_argument("--model", required=True, help="model the vectors come from (Hub id or built-in name)")
    p.add_argument("--variant", default="templated", help="prompt variant to file them under (default: templated)")
    p.add_argument("--mask-strategy", default="answer_mean", help="mask strategy folder (default: answer_mean)")
    p.add_argument("--output", default=None, help="store root (default: $ARTIFACTS_DIR/activations)")
    p.add_argument(
        "--layout",
        choices=("auto", "with-embeddings", "blocks"),
        default="auto",
        help="rows of the files: auto (from the model's layer count), with-embeddings ([L+1, d]) or blocks ([L, d])",
    )
    p.add_argument("--num-layers", type=int, default=None, help="the model's decoder layers (auto layout without a config)")
    p.set_defaults(handler=_cmd_import)
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


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_doctor, _add_extract, _add_validate, _add_import):
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
