"""The `pvrs` command line. Each sub-command is a small `_cmd_*` function; user mistakes
(`PvrsError`) print one line on stderr and exit 2, nothing else is caught."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pvrs.errors import InputError, PvrsError
from pvrs.sources import SOURCE_HELP, local_store_root

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


def _cmd_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from pvrs import analyze
    from pvrs.analysis import nearest_neighbours
    from pvrs.errors import InputError
    from pvrs.masks import ALL_STRATEGIES, DEFAULT_STRATEGY, parse_strategies
    from pvrs.models import canonical_model_name, model_dir_name
    from pvrs.probes import load_persona_attributes

    model = canonical_model_name(args.model)
    every = any(s.lower() == "all" for s in args.mask_strategy)
    # With `all`, the default strategy (when saved) is the one analysed in full.
    chosen = [DEFAULT_STRATEGY, *ALL_STRATEGIES] if every else args.mask_strategy
    strategies = [str(s) for s in parse_strategies(chosen)]
    console = Console(stderr=True)
    with console.status("reading persona vectors") as status:
        sets = analyze.read_vector_sets(
            model, args.source, strategies, args.variant, args.layers, skip_missing=every
        )
        primary = sets[0].mask_strategy
        unknown = [p for p in args.neighbours_of or () if p not in sets[0].persona_ids]
        if unknown:
            raise InputError(
                f"--neighbours-of {unknown[0]}: no such persona in {sets[0].label} "
                f"(have {', '.join(sets[0].persona_ids[:10])})"
            )
        out = Path(args.out) if args.out else Path("reports") / model_dir_name(model) / primary
        options = analyze.ReportOptions(
            default_ids=args.default_persona,
            focus_layer=args.focus_layer,
            attributes=load_persona_attributes(args.persona_file)
            if args.persona_file
            else analyze.builtin_attributes_for(sets[0].persona_ids),
            probe_attributes=args.attribute,
            probe_methods=args.probe_method or analyze.PROBE_METHODS,
            folds=args.folds,
            neighbours=args.neighbours,
            png=not args.no_png,
            title=f"pvrs analysis: {model}",
            facts=[("model", model), ("source", str(args.source or "local store"))],
        )
        result = analyze.run_analysis(sets, out, options, progress=status.update)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    print(f"report: {result.html}")
    if result.pngs:
        print(f"PNGs:   {result.pngs[0].parent}/ ({len(result.pngs)} figures)")
    print(f"tables: {result.out_dir / 'tables'}/ and {result.out_dir / 'summary.json'}")
    for probe_dir in result.probes:
        print(f"probe:  {probe_dir}")
    focus = result.summary["focus_layer"]
    main_set = sets[0]
    for pid in args.neighbours_of or ():
        x = main_set.samples[:, main_set.layers.index(focus)]
        found = nearest_neighbours(x, main_set.persona_ids, pid, options.neighbours)
        listed = ", ".join(f"{n.persona_id} ({n.cosine:+.3f})" for n in found)
        print(f"nearest to {pid} at layer {focus} (centered cosine): {listed}")
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    from pvrs.masks import DEFAULT_STRATEGY
    from pvrs.models import DEFAULT_MODEL

    p = sub.add_parser(
        "analyze",
        help="similarity, PCA, the assistant axis, layer curves and probes: HTML, PNGs, tables",
        description="Analyse saved persona vectors. The first variant and mask strategy are "
        "analysed in full; further ones are compared with it (agreement by layer).",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="model id or built-in name (default: %(default)s)"
    )
    p.add_argument(
        "--variant", nargs="+", metavar="V", help="prompt variants (default: every one saved)"
    )
    p.add_argument(
        "--mask-strategy",
        nargs="+",
        default=[str(DEFAULT_STRATEGY)],
        metavar="S",
        help=f"mask strategies; `all` compares every saved one (default: {DEFAULT_STRATEGY})",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="L",
        help="layers to analyse: numbers or ranges like 4-12 (default: all)",
    )
    p.add_argument("--source", metavar="DIR|ORG/NAME", help=SOURCE_HELP)
    p.add_argument(
        "--persona-file", help="persona file (JSONL/JSON/parquet) whose extra columns are probed"
    )
    p.add_argument(
        "--attribute", nargs="+", metavar="A", help="attributes to probe (default: every one)"
    )
    p.add_argument(
        "--probe-method",
        nargs="+",
        choices=("logistic", "ridge", "diffmeans"),
        metavar="M",
        help="probe methods: logistic, ridge, diffmeans (default: all that fit the attribute)",
    )
    p.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)"
    )
    p.add_argument(
        "--default-persona",
        nargs="+",
        metavar="ID",
        help="personas that define the assistant end of the axis (default: baseline_assistant)",
    )
    p.add_argument(
        "--focus-layer",
        type=int,
        help="layer for heatmaps, projections and tables (default: the middle analysed layer)",
    )
    p.add_argument(
        "--neighbours",
        type=int,
        default=5,
        help="nearest neighbours listed per persona (default: %(default)s)",
    )
    p.add_argument(
        "--neighbours-of",
        nargs="+",
        metavar="ID",
        help="also print these personas' nearest neighbours at the focus layer",
    )
    p.add_argument(
        "--no-png", action="store_true", help="skip PNG export (it needs Chrome/Chromium)"
    )
    p.add_argument("--out", help="output folder (default: reports/<model>/<strategy>)")
    p.set_defaults(handler=_cmd_analyze)


def _cmd_preview(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from pvrs import models
    from pvrs.chat import analyze_template, prepare_inputs, print_preview
    from pvrs.errors import InputError
    from pvrs.masks import parse_strategies

    explicit = args.question is not None or args.answer is not None or args.system is not None
    if explicit and (args.question is None or args.answer is None):
        raise InputError("--system/--question/--answer: pass both --question and --answer (--system is optional)")
    if explicit and args.persona_id:
        raise InputError("pass either --persona-id or --system/--question/--answer, not both")
    tokenizer = models.load_tokenizer(args.model, revision=args.revision)
    if explicit:
        label, system = "custom", args.system
        samples = [("custom", args.question, args.answer)]
    else:
        from pvrs.inputs import load_personas, load_qa, qa_for_persona, select_personas

        personas = load_personas(args.personas)
        [persona] = select_personas(personas, [args.persona_id]) if args.persona_id else personas[:1]
        label, system = f"{persona.id} ({args.variant})", persona.system_prompt(args.variant)
        rows = qa_for_persona(load_qa(args.qa), persona, n_train=args.n)
        if not rows:
            raise InputError(f"persona {persona.id!r} has no QA rows in the train split; pass --qa or --question/--answer")
        samples = [(r.sample_id, r.question, r.answer) for r in rows]
    strategies = parse_strategies(args.mask_strategy)
    console = Console()
    layout = analyze_template(tokenizer, has_system=system is not None)
    if system is None and layout.default_system is None and args.mask_strategy == "all":
        # `all` means every strategy the baseline can serve under this template.
        strategies = [s for s in strategies if not s.value.startswith("persona_")]
        console.print("[dim]no system prompt and no template default: persona_* strategies skipped[/]")
    console.print(
        f"[bold]{escape(args.model)}[/] · persona [bold]{escape(label)}[/] · system prompt: "
        + {"native": "system turn", "merged": "merged into the first user turn", "none": "none"}[layout.system_mode]
        + (" (template default shown as the persona span)" if layout.default_system else "")
    )
    for prepared in prepare_inputs(tokenizer, samples, system_prompt=system, strategies=strategies):
        print_preview(console, tokenizer, prepared, strategies)
    return 0


def _add_preview(sub: argparse._SubParsersAction) -> None:
    from pvrs.inputs import VARIANTS
    from pvrs.models import DEFAULT_MODEL

    p = sub.add_parser(
        "preview",
        help="show the rendered prompt with each mask strategy's tokens highlighted",
        description="Render persona conversations with the model's chat template and highlight "
        "the tokens each mask strategy averages. Loads only the tokenizer.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id, local folder or built-in (default {DEFAULT_MODEL})")
    p.add_argument("--revision", default=None, help="model revision on the Hub")
    p.add_argument("--persona-id", default=None, help="persona to preview (default: the first persona)")
    p.add_argument("--variant", choices=VARIANTS, default="templated", help="prompt variant (default templated)")
    p.add_argument("--personas", default=None, help="persona file (default: the built-in demo set)")
    p.add_argument("--qa", default=None, help="QA file (default: the built-in demo set)")
    p.add_argument("-n", type=int, default=1, help="number of QA pairs to show (default 1)")
    p.add_argument("--mask-strategy", default="all", help="a strategy name or 'all' (default all)")
    p.add_argument("--system", default=None, help="custom system prompt (omit for none)")
    p.add_argument("--question", default=None, help="custom question (with --answer)")
    p.add_argument("--answer", default=None, help="custom answer (with --question)")
    p.set_defaults(handler=_cmd_preview)


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
    from pvrs.defaults import DEFAULT_BATCH_TOKENS, DEFAULT_MIN_SCORE
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


def _cmd_push(args: argparse.Namespace) -> int:
    from pvrs import hub
    from pvrs.errors import InputError
    from pvrs.models import canonical_model_name

    if args.dry_run and args.out is None:
        raise InputError("--dry-run writes the dataset folder only: pass --out DIR")
    if not args.dry_run and args.repo is None:
        raise InputError("--repo ORG/NAME is required (or use --dry-run --out DIR)")
    result = hub.push(
        [canonical_model_name(m) for m in args.model],
        args.repo,
        mask_strategies=args.mask_strategy,
        root_dir=local_store_root(args.source),
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        out_dir=args.out,
        overwrite=True,
        commit_message=args.message,
        row_group_bytes=int(args.row_group_mb * (1 << 20)),
        file_bytes=int(args.file_mb * (1 << 20)),
    )
    pkg = result.package
    for s in pkg.splits:
        print(f"{s.config} / {s.split}: {s.num_rows} personas x ({s.num_layers}, {s.hidden_size}), {len(s.files)} file(s), {s.written_bytes / 1e6:.1f} MB")
    if result.commit_url is None:
        print(f"wrote {pkg.out_dir} (dry run, nothing uploaded)")
    else:
        print(f"pushed to https://huggingface.co/datasets/{result.repo_id}: {result.commit_url}")
        if result.deleted:
            print(f"removed {len(result.deleted)} stale file(s)")
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="publish persona vectors as a Hugging Face dataset (parquet, one commit)",
        description="Package the local persona vectors of one or more models into the Hub "
        "dataset layout (one config per model and mask strategy, one split per variant) "
        "and upload it in one commit. The token comes from `hf auth login` or HF_TOKEN.",
    )
    p.add_argument("--model", action="append", required=True, metavar="M", help="model id or folder name in the store (repeatable)")
    p.add_argument("--mask-strategy", nargs="+", metavar="S", help="mask strategies to publish, or 'all' (default: every one present)")
    p.add_argument("--repo", metavar="ORG/NAME", help="dataset repo id (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)")
    p.add_argument("--dry-run", action="store_true", help="only write the dataset folder to --out")
    p.add_argument("--out", metavar="DIR", help="where to write the dataset folder (required with --dry-run; replaced if it holds an earlier package)")
    p.add_argument("--source", metavar="DIR", help="local store to publish (default: $ARTIFACTS_DIR/activations)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--row-group-mb", type=float, default=64.0, metavar="MB", help="uncompressed row group size, the memory bound (default: 64)")
    p.add_argument("--file-mb", type=float, default=500.0, metavar="MB", help="uncompressed size of one parquet file (default: 500)")
    p.set_defaults(handler=_cmd_push)


def _cmd_validate(args: argparse.Namespace) -> int:
    from pvrs.paths import activations_dir
    from pvrs.validation import validate

    report = validate(args.path or activations_dir(), deep=args.deep)
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
    p.add_argument(
        "path",
        nargs="?",
        help="store root, artifacts tree or one variant folder (default: $ARTIFACTS_DIR/activations)",
    )
    p.add_argument("--deep", action="store_true", help="also check sha256 and scan for NaN/Inf")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_validate)


def _cmd_import(args: argparse.Namespace) -> int:
    from pvrs.importers import CONTROL_VECTOR, WITH_EMBEDDINGS, import_vectors
    from pvrs.models import canonical_model_name
    from pvrs.store import PersonaVectorStore

    store = PersonaVectorStore(
        canonical_model_name(args.model), root_dir=args.output_dir, mask_strategy=args.mask_strategy
    )
    result = import_vectors(
        args.files, store, args.variant, layout=args.layout, num_layers=args.num_layers
    )
    notes = {
        WITH_EMBEDDINGS: " (dropped the embedding row)",
        CONTROL_VECTOR: " (control vectors: blocks without a direction are zero rows)",
    }
    print(
        f"imported {len(result.persona_ids)} vector(s) of ({result.num_layers}, {result.hidden_size})"
        f"{notes.get(result.source_layer_convention, '')} into {result.variant_dir}"
    )
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import vectors from other tools (.pt tensors, llama.cpp .gguf control vectors) into the store",
        description="Import [L+1, d] (embedding row first) or [L, d] .pt tensors, or llama.cpp "
        "control vectors (.gguf, direction.k = block k); persona id = file stem.",
    )
    p.add_argument("files", nargs="+", help=".pt/.gguf files or folders of them")
    p.add_argument("--model", required=True, help="model the vectors come from (Hub id or built-in name)")
    p.add_argument("--variant", default="templated", help="prompt variant to file them under (default: templated)")
    p.add_argument("--mask-strategy", default="answer_mean", help="mask strategy folder (default: answer_mean)")
    p.add_argument("--output-dir", metavar="DIR", help="store root (default: $ARTIFACTS_DIR/activations)")
    p.add_argument(
        "--layout",
        choices=("auto", "with-embeddings", "blocks"),
        default="auto",
        help="rows of the files: auto (from the model's layer count), with-embeddings ([L+1, d]) or blocks ([L, d])",
    )
    p.add_argument("--num-layers", type=int, default=None, help="the model's decoder layers (when its config cannot be read)")
    p.set_defaults(handler=_cmd_import)


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
    p.add_argument("--source", metavar="DIR|ORG/NAME", help=f"where stored vectors are read: {SOURCE_HELP}")


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
        _add_preview,
        _add_validate,
        _add_import,
        _add_push,
        _add_analyze,
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
