"""The `pvrs` command line. Each sub-command is a small `_cmd_*` function; user mistakes
(`PvrsError`) print one line on stderr and exit 2, nothing else is caught."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from pvrs.errors import PvrsError

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

    from pvrs import report
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
        sets = report.read_vector_sets(
            model, args.source, strategies, args.variant, args.layers, skip_missing=every
        )
        primary = sets[0].mask_strategy
        out = Path(args.out) if args.out else Path("reports") / model_dir_name(model) / primary
        options = report.ReportOptions(
            default_ids=args.default_persona,
            focus_layer=args.focus_layer,
            attributes=load_persona_attributes(args.persona_file)
            if args.persona_file
            else report.builtin_attributes_for(sets[0].persona_ids),
            probe_attributes=args.attribute,
            probe_methods=args.probe_method or report.PROBE_METHODS,
            folds=args.folds,
            neighbours=args.neighbours,
            png=not args.no_png,
            title=f"pvrs analysis: {model}",
            facts=[("model", model), ("source", str(args.source or "local store"))],
        )
        result = report.run_analysis(sets, out, options, progress=status.update)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    print(f"report: {result.html}")
    if result.pngs:
        print(f"PNGs:   {result.pngs[0].parent}/ ({len(result.pngs)} figures)")
    print(f"tables: {result.out_dir / 'tables'}/ and {result.out_dir / 'summary.json'}")
    for probe_dir in result.probes:
        print(f"probe:  {probe_dir}")
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
        help="mask strategies; `all` compares every saved one (default: %(default)s)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="L",
        help="layers to analyse: numbers or ranges like 4-12 (default: all)",
    )
    p.add_argument(
        "--source",
        help="local store folder, packaged dataset folder or Hub dataset ORG/NAME "
        "(default: $ARTIFACTS_DIR/activations)",
    )
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
        "--no-png", action="store_true", help="skip PNG export (it needs Chrome/Chromium)"
    )
    p.add_argument("--out", help="output folder (default: reports/<model>/<strategy>)")
    p.set_defaults(handler=_cmd_analyze)


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_doctor, _add_analyze):
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
