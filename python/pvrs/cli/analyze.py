"""`pvrs analyze`: the report of every analysis over stored vectors."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvrs.cli.common import (
    UniqueList,
    bounded_int,
    check_writable,
    non_negative_int,
    positive_int,
    writing,
)
from pvrs.errors import InputError
from pvrs.hub.vector_sources import SOURCE_HELP


def _cmd_analyze(args: argparse.Namespace) -> int:

    from rich.console import Console
    from rich.markup import escape

    from pvrs.analysis import report as analyze
    from pvrs.analysis.compute import nearest_neighbours
    from pvrs.analysis.probes import load_persona_attributes
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.extraction.masks import ALL_STRATEGIES, DEFAULT_STRATEGY, parse_strategies

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
        check_writable("--out", out, is_dir=True)
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
            geometry=None if args.no_geometry else args.geometry_normalize,
            png=not args.no_png,
            title=f"pvrs analysis: {model}",
            facts=[("model", model), ("source", str(args.source or "local store"))],
        )
        with writing(out):
            result = analyze.run_analysis(sets, out, options, progress=status.update)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")  # notes quote `pvrs[umap]`, not markup
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
    from pvrs.analysis.geometry import NORMALISATIONS
    from pvrs.engines.models import DEFAULT_MODEL
    from pvrs.extraction.masks import DEFAULT_STRATEGY

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
        "--variant",
        "--variants",
        nargs="+",
        action=UniqueList,
        metavar="V",
        help="prompt variants (default: every one saved)",
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
        "--folds", type=bounded_int(2), default=5, help="cross-validation folds (default: %(default)s)"
    )
    p.add_argument(
        "--default-persona",
        nargs="+",
        metavar="ID",
        help="personas that define the assistant end of the axis (default: baseline_assistant)",
    )
    p.add_argument(
        "--focus-layer",
        type=non_negative_int,
        help="layer for heatmaps, projections and tables (default: the middle analysed layer)",
    )
    p.add_argument(
        "--neighbours",
        type=positive_int,
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
        "--geometry-normalize",
        choices=NORMALISATIONS,
        default="center",
        help="vectors for k-means, Isomap/UMAP and the dendrogram: none, center (subtract "
        "the mean persona), unit (unit norm) or center-unit (default: %(default)s)",
    )
    p.add_argument(
        "--no-geometry",
        action="store_true",
        help="skip k-means, Isomap, UMAP and the dendrogram (seconds to minutes with many "
        "personas and layers; UMAP needs pip install 'pvrs[umap]')",
    )
    p.add_argument(
        "--no-png", action="store_true", help="skip PNG export (it needs Chrome/Chromium)"
    )
    p.add_argument("--out", help="output folder (default: reports/<model>/<strategy>)")
    p.set_defaults(handler=_cmd_analyze)


def register(sub: argparse._SubParsersAction) -> None:
    _add_analyze(sub)
