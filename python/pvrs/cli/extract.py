"""`pvrs extract` and `pvrs preview`: computing persona vectors, and showing which tokens
each mask strategy would average."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pvrs.cli.common import (
    UniqueList,
    add_engine_args,
    add_generation_args,
    add_model_args,
    check_writable,
    non_negative_int,
    positive_int,
    refuse_clashes,
    refuse_without,
    score_threshold,
    vllm_config,
)
from pvrs.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.engines.ray_engine import RayConfig
    from pvrs.engines.vllm_engine import VllmConfig


def _cmd_preview(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from pvrs.engines import models
    from pvrs.errors import InputError
    from pvrs.extraction.chat import prepare_inputs, print_preview
    from pvrs.extraction.masks import parse_strategies
    from pvrs.extraction.template import analyze_template

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
        from pvrs.extraction.inputs import load_personas, load_qa, qa_for_persona, select_personas

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
    for prepared in prepare_inputs(
        tokenizer, samples, system_prompt=system, strategies=strategies, split_special_tokens=args.split_special_tokens
    ):
        print_preview(console, tokenizer, prepared, strategies)
    return 0


def _add_preview(sub: argparse._SubParsersAction) -> None:
    from pvrs.engines.models import DEFAULT_MODEL
    from pvrs.extraction.inputs import VARIANTS

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
    p.add_argument("-n", type=positive_int, default=1, help="number of QA pairs to show (default 1)")
    p.add_argument("--mask-strategy", default="all", help="a strategy name or 'all' (default all)")
    p.add_argument("--system", default=None, help="custom system prompt (omit for none)")
    p.add_argument("--question", default=None, help="custom question (with --answer)")
    p.add_argument("--answer", default=None, help="custom answer (with --question)")
    _add_split_special_tokens(p)
    p.set_defaults(handler=_cmd_preview)


def _add_split_special_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split-special-tokens", action="store_true",
        help="tokenize control-token strings (<|im_end|>, ...) inside questions, answers and persona "
        "prompts as text, not as control tokens (default: control tokens, with a warning)",
    )


def _cmd_extract(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pvrs.cli.report import print_extraction_summary
    from pvrs.engines import models
    from pvrs.extraction import inputs
    from pvrs.extraction.driver import extract
    from pvrs.extraction.generate import SamplingConfig, load_scores
    from pvrs.extraction.masks import parse_strategies
    from pvrs.extraction.samples import SampleSource
    from pvrs.paths import activations_dir

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
    check_writable("--output-dir", root, is_dir=True)
    model_name = models.canonical_model_name(args.model)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed) if args.generate else None
    source = SampleSource(
        qa, n_train=args.n_train, qa_type=args.qa_type, generate=sampling,
        generations_dir=root.parent / "generations" / models.model_dir_name(model_name),
        scores=scores, min_score=args.min_score,
    )
    # Input mistakes (an unknown strategy, a repeated qid, a missing prompt) fail here, not
    # after the model has loaded.
    parse_strategies(args.mask_strategy)
    for persona in personas:
        source.selected(persona)
        for variant in args.variants:
            persona.system_prompt(variant)
    # vLLM first: its clash with --ray is one line before Ray is imported or started.
    vllm = _vllm_config(args)
    ray = _ray_config(args)
    engine = "" if vllm is None else " on vLLM"
    console.print(f"[bold]pvrs extract[/]: {len(personas)} personas x {len(args.variants)} variants, model {model_name}{engine}")
    model, tokenizer, load = open_model(args, ray, vllm)
    result = extract(
        model, tokenizer, personas, source,
        variants=args.variants, mask_strategies=args.mask_strategy, batch_tokens=args.batch_tokens,
        padding_side=args.padding_side, prefix_reuse=not args.no_prefix_reuse, model_name=model_name,
        save_to=root, force=args.force, save_samples=args.save_samples, revision=args.revision,
        allow_long_samples=args.allow_long_samples, split_special_tokens=args.split_special_tokens,
        verbose=args.verbose, console=console, ray=ray, vllm=vllm, load=load,
    )
    print_extraction_summary(Console(), result, root)  # the output; progress and warnings: stderr
    if result.stopped:
        print(f"pvrs extract: error: {result.stopped}", file=sys.stderr)
    return 1 if result.count("failed") else 0


def open_model(
    args: argparse.Namespace, ray: RayConfig | None, vllm: VllmConfig | None
) -> tuple[nn.Module, PreTrainedTokenizerBase, Callable[[], nn.Module] | None]:
    """The model a run plans with, and what loads its weights (None: the engine does): a
    weightless skeleton on Ray and vLLM; with transformers the skeleton plans and resumes, so a
    run whose personas are all saved, or that would replace vectors of other samples, never
    loads the weights."""
    from pvrs.engines import models

    load: Callable[[], nn.Module] | None = None
    if ray is not None:
        model, tokenizer = models.skeleton(ray.model, on_gpu=bool(ray.gpus_per_replica))
    elif vllm is not None:
        import torch

        model, tokenizer = models.skeleton(vllm.model, on_gpu=torch.cuda.is_available())
    else:
        spec = models.ModelSpec(args.model, dtype=args.dtype, revision=args.revision, trust_remote_code=args.trust_remote_code)
        model, tokenizer = models.skeleton(spec, on_gpu=models.resolve_device(args.device).startswith("cuda"))

        def load() -> nn.Module:
            return models.load(
                args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                revision=args.revision, trust_remote_code=args.trust_remote_code,
            )[0]

    return model, tokenizer, load


def _ray_config(args: argparse.Namespace) -> RayConfig | None:
    """`--ray` flags checked against each other and the cluster (joined here: an unreachable
    address is a user error before the model loads), with replicas and GPUs fitted to it."""
    if args.ray is None:
        refuse_without("--ray", "spreads work over Ray replicas", {"--replicas": args.replicas, "--gpus-per-replica": args.gpus_per_replica})
        return None
    refuse_clashes("--ray", [
        ("--shard", args.shard, "Ray spreads the personas itself; drop --shard"),
        ("--device-map", args.device_map, "use --gpus-per-replica K (K > 1 spreads each replica over K GPUs)"),
        ("--device", args.device != "auto", "replicas use a GPU when --gpus-per-replica > 0, else the CPU"),
    ])
    from pvrs.engines.ray_engine import ModelSpec, RayConfig, connect, plan

    config = RayConfig(
        ModelSpec(args.model, dtype=args.dtype, revision=args.revision, trust_remote_code=args.trust_remote_code,
                  threads=args.threads),
        address=args.ray or None, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
    )
    replicas, gpus = plan(connect(config.address), config)
    return replace(config, replicas=replicas, gpus_per_replica=gpus)


def _vllm_config(args: argparse.Namespace) -> VllmConfig | None:
    """`--engine vllm` and its flags, checked before the model loads (vLLM itself included)."""
    return vllm_config(args, [
        ("--ray", args.ray is not None, "Ray replicas run the transformers engine; drop --ray (vLLM batches and shards itself)"),
        ("--device-map", args.device_map, "use --tensor-parallel-size N to spread the model over N GPUs"),
    ])


def add_model_group(p: argparse.ArgumentParser) -> None:
    """The model a run loads, and how (`open_model` reads them)."""
    mod = p.add_argument_group("model")
    add_model_args(mod)
    mod.add_argument("--revision", help="model revision on the Hub: branch, tag or commit (default: main)")
    mod.add_argument("--device-map", help="e.g. 'auto' to spread a large model over several GPUs")
    mod.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (only for repos you trust)")


def add_batching_args(run: argparse._ArgumentGroup) -> None:
    from pvrs.defaults import DEFAULT_BATCH_TOKENS

    run.add_argument(
        "--batch-tokens", type=positive_int, default=DEFAULT_BATCH_TOKENS,
        help="padded tokens per forward batch (default %(default)s; lowered on CUDA out-of-memory)",
    )
    run.add_argument(
        "--padding-side", choices=["right", "left"], default="right", help="where batches are padded (default %(default)s)"
    )
    run.add_argument("--no-prefix-reuse", action="store_true", help="re-encode the persona prompt for every question (vLLM: prefix caching off)")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """Ray's flags (read by `_ray_config`; a command with them has no --shard)."""
    ray = p.add_argument_group("Ray (pip install 'pvrs[ray]')")
    ray.add_argument(
        "--ray", nargs="?", const="", metavar="auto|ADDRESS",
        help="run on Ray replicas (with --generate they answer too; this process saves): alone, a "
        "local Ray on 127.0.0.1 (or RAY_ADDRESS); 'auto', the cluster of `ray start --head` on this machine; or "
        "HOST:6379 / ray://HOST:10001 (default: no Ray)",
    )
    ray.add_argument(
        "--replicas", type=positive_int, metavar="N",
        help="model replicas (default: as many as the cluster's nodes hold, each on one node; 1 on CPU)",
    )
    ray.add_argument(
        "--gpus-per-replica", type=non_negative_int, metavar="K",
        help="GPUs per replica; K > 1 spreads the model over them (default: 1 if the cluster has GPUs, else 0)",
    )


def _add_extract(sub: argparse._SubParsersAction) -> None:
    from pvrs.defaults import DEFAULT_MIN_SCORE
    from pvrs.extraction.inputs import QA_TYPES, VARIANTS
    from pvrs.extraction.masks import ALL_STRATEGIES

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
    data.add_argument("--sample-size", type=positive_int, metavar="N", help="only the first N personas")
    data.add_argument("--n-train", type=positive_int, metavar="N", help="first N train-split QA rows per persona")
    data.add_argument(
        "--qa-type", choices=QA_TYPES, default="all",
        help="QA rows to use by their type: explicit, implicit or all (default %(default)s)",
    )
    data.add_argument(
        "--variants", "--variant", nargs="+", choices=VARIANTS, default=list(VARIANTS), action=UniqueList,
        metavar="V", help=f"prompt variants: {', '.join(VARIANTS)} (default: both)",
    )
    data.add_argument(
        "--mask-strategy", nargs="+", default=["answer_mean"], metavar="S",
        help=f"strategies ({', '.join(s.value for s in ALL_STRATEGIES)}), or 'all' (default: answer_mean)",
    )
    data.add_argument("--scores", metavar="FILE", help="judge scores (persona_id, qid, score); keep samples scoring >= --min-score")
    data.add_argument(
        "--min-score", type=score_threshold, default=DEFAULT_MIN_SCORE, help="lowest judge score kept, 0-100 (default %(default)s)"
    )
    gen = p.add_argument_group("answer generation (--generate)")
    gen.add_argument("--generate", action="store_true", help="let the model answer the questions in persona, save the conversations, extract from them")
    add_generation_args(
        gen, max_new_tokens=128, temperature=0.7, why="varied answers, as the reference tool", system=False
    )
    add_model_group(p)
    run = p.add_argument_group("run")
    add_batching_args(run)
    run.add_argument("--output-dir", metavar="DIR", help="store root (default $ARTIFACTS_DIR/activations)")
    run.add_argument(
        "--force", action="store_true",
        help="recompute personas already saved, replacing vectors saved from other samples (refused without it)",
    )
    run.add_argument("--save-samples", action="store_true", help="also save per-sample vectors")
    run.add_argument(
        "--allow-long-samples", action="store_true",
        help="extract conversations longer than the model's max_position_embeddings (refused by default)",
    )
    _add_split_special_tokens(run)
    run.add_argument("--shard", metavar="I/N", help="only personas whose index mod N is I (0-based)")
    add_ray_args(p)
    add_engine_args(p, "--generate and extraction")
    run.add_argument("--verbose", action="store_true", help="preview each persona's masked tokens (skipped ones too)")
    p.set_defaults(handler=_cmd_extract)


def register(sub: argparse._SubParsersAction) -> None:
    _add_extract(sub)
    _add_preview(sub)
