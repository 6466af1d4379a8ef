"""`pvrs attribute`: attribute vectors from minimal pairs (one attribute swapped, nothing else),
saved in persona-vectors' trait vector store, with their report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvrs.cli.common import add_engine_args, check_writable, non_negative_int, positive_int
from pvrs.cli.extract import (
    _ray_config,
    _vllm_config,
    add_batching_args,
    add_model_group,
    add_ray_args,
    open_model,
)
from pvrs.errors import InputError


def _references(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        attribute, sep, value = pair.partition("=")
        if not sep or not attribute or not value:
            raise InputError(f"--reference {pair!r}: expected ATTRIBUTE=VALUE, e.g. age_band=young")
        out[attribute] = value
    return out


def _cmd_attribute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pvrs.analysis.attributes import write_attribute_report
    from pvrs.engines import models
    from pvrs.engines.hooks import decoder_layers
    from pvrs.extraction import attributes as attr
    from pvrs.extraction.masks import parse_strategies
    from pvrs.paths import artifacts_dir
    from pvrs.store.traits import TRAIT_VECTORS_DIR, TraitVectorStore

    console = Console(stderr=True)
    personas = attr.load_attribute_personas(args.personas)
    template = attr.load_template(args.template)
    qa = attr.load_attribute_qa(args.qa)
    # Input mistakes fail here, before the model loads.
    (strategy,) = parse_strategies([args.mask_strategy])
    directions = attr.plan_directions(
        personas, template, args.attribute or (), all_binary=args.all_binary, reference=_references(args.reference)
    )
    root = Path(args.output_dir) if args.output_dir else artifacts_dir()
    check_writable("--output-dir", root, is_dir=True)
    model_name = models.canonical_model_name(args.model)
    store = TraitVectorStore(model_name, root / TRAIT_VECTORS_DIR, strategy.value)
    if args.layer is not None and args.no_report:
        raise InputError("--layer picks the report's layer; drop it or --no-report")
    vllm = _vllm_config(args)
    ray = _ray_config(args)
    keys = ", ".join(d.key for d in directions)
    console.print(f"[bold]pvrs attribute[/]: {keys} over {len(personas)} personas, model {model_name}")
    model, tokenizer, load = open_model(args, ray, vllm)
    n_layers = len(decoder_layers(model))  # the skeleton knows them: a bad --layer costs no compute
    if args.layer is not None and args.layer >= n_layers:
        raise InputError(f"--layer {args.layer}: {model_name} has {n_layers} layers (0-{n_layers - 1})")
    result = attr.attribute_vectors(
        model, tokenizer, personas, template, qa, args.attribute or (),
        all_binary=args.all_binary, reference=_references(args.reference), mask_strategy=strategy.value,
        model_name=model_name, output_dir=root, n_train=args.n_train, force=args.force, console=console,
        batch_tokens=args.batch_tokens, padding_side=args.padding_side, prefix_reuse=not args.no_prefix_reuse,
        revision=args.revision, ray=ray, vllm=vllm, load=load,
    )  # fmt: skip
    failed = [o for o in result.outcomes if o.status == "failed"]
    if failed:
        print(f"pvrs attribute: error: view {failed[0].persona_id!r} failed: {failed[0].reason}; nothing was averaged", file=sys.stderr)
        return 1
    for key, entry in result.entries.items():
        mid = str(len(entry["auc_by_layer"]) // 2)
        print(
            f"{key}: {entry['value_from']} -> {entry['value_to']}, {entry['n_personas']} pairs, "
            f"layer {mid}: AUC {entry['auc_by_layer'][mid]:.2f}, gap {entry['gap_norm_by_layer'][mid]:.3g}, "
            f"cos with the population difference {entry['population_cosine_by_layer'][mid]:.2f}"
        )
    print(f"saved: {store.variant_dir(attr.VARIANT)}")
    if not args.no_report:
        where = root / "reports" / "attributes" / models.model_dir_name(model_name) / strategy.value / "report.html"
        print(f"report: {write_attribute_report(store, where, focus=args.layer)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attribute",
        help="attribute vectors from minimal pairs (one attribute swapped), deconfounded",
        description="For each persona, render its system prompt from the template at both values of an attribute "
        "with every other attribute kept, extract both views and average the value-oriented deltas: one vector per "
        "binary attribute, one per value against a reference value for wider ones. Saved in persona-vectors' "
        "trait_vectors/ layout, with a report (trait cosine vs co-occurrence, AUC and gap per layer). With no "
        "files: the built-in attribute personas and template.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--attribute", nargs="+", metavar="NAME", help="attributes to build (template fields)")
    data.add_argument("--all-binary", action="store_true", help="every attribute with exactly two values")
    data.add_argument("--reference", nargs="+", metavar="ATTR=VALUE",
                      help="the value directions start from (default: the first in sorted order)")  # fmt: skip
    data.add_argument("--personas", metavar="FILE", help="personas with attribute fields (default: the built-in attribute set)")
    data.add_argument("--template", metavar="FILE", help="system prompt text with {attribute} fields (default: the built-in one)")
    data.add_argument("--qa", metavar="FILE", help="QA rows; shared ones (no persona_id) go to every view (default: the built-in assistant's)")
    data.add_argument("--n-train", type=positive_int, metavar="N", help="first N train-split QA rows per view (default: all)")
    data.add_argument(
        "--mask-strategy", default="persona_mean", metavar="S",
        help="tokens averaged (default %(default)s: the rendered persona prompt, as persona-vectors' trait vectors)",
    )
    add_model_group(p)
    run = p.add_argument_group("run")
    add_batching_args(run)
    run.add_argument("--output-dir", metavar="DIR",
                     help="artifacts folder: trait_vectors/, attribute_views/, reports/ (default $ARTIFACTS_DIR)")  # fmt: skip
    run.add_argument("--force", action="store_true", help="recompute views already saved")
    run.add_argument("--layer", type=non_negative_int, metavar="L", help="the report's first layer (default: the middle one)")
    run.add_argument("--no-report", action="store_true", help="save the vectors only")
    add_ray_args(p)
    add_engine_args(p, "extraction")
    p.set_defaults(handler=_cmd_attribute, shard=None)
