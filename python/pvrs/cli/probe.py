"""`pvrs probe`: cross-validated linear probes from stored persona vectors to persona
attributes, on their own (`pvrs analyze` runs them too, inside the report)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvrs.cli.common import UniqueList, check_writable, positive_int, writing
from pvrs.errors import InputError
from pvrs.hub.vector_sources import SOURCE_HELP

METHODS = ("logistic", "ridge", "diffmeans")


def fast_layers(layers: Sequence[int]) -> list[int]:
    """Five evenly spaced layers (first, quarters, last), the reference's default sweep."""
    n = len(layers)
    return [layers[i] for i in sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})]


def parse_ordinal(items: Sequence[str] | None) -> dict[str, list[str]]:
    """`--ordinal ATTR=LOW,MID,HIGH` items as `{attribute: order}`."""
    orders: dict[str, list[str]] = {}
    for item in items or ():
        name, _, values = item.partition("=")
        order = [v.strip() for v in values.split(",") if v.strip()]
        if not name.strip() or len(order) < 2:
            raise InputError(f"--ordinal {item!r} is not ATTR=LOW,...,HIGH with two or more values")
        orders[name.strip()] = order
    return orders


def _probe_one(
    vectors: Any, attributes: dict[str, dict[str, Any]], attribute: str, args: argparse.Namespace,
    order: list[str] | None, out: Path,
) -> tuple[list[tuple[Any, Path]], list[str]]:  # fmt: skip
    """Every method that fits `attribute`: its curve and saved best-layer probe, and notes
    (classes left out for being too rare)."""
    from pvrs.analysis.probe_artifacts import save_probe_artifact
    from pvrs.analysis.probes import (
        cross_validate_probe,
        drop_rare_classes,
        fit_probe,
        ordinal_ranks,
        probe_labels,
    )
    from pvrs.analysis.tables import slug

    notes: list[str] = []
    if order is not None:
        attributes = ordinal_ranks(attributes, attribute, order)
    task = probe_labels(vectors.persona_ids, attributes, attribute)[2]
    if task == "classification":
        attributes, rare = drop_rare_classes(
            attributes, vectors.persona_ids, attribute, args.min_class_count
        )
        if rare:
            listed = ", ".join(f"{c!r} ({n})" for c, n in sorted(rare.items()))
            notes.append(
                f"{attribute}: left out class(es) with fewer than {args.min_class_count} personas: {listed}"
            )
    results = []
    for method in args.method or METHODS:
        if task == "regression" and method != "ridge":
            continue  # logistic and difference of means need categories
        curve = cross_validate_probe(
            vectors.samples, vectors.persona_ids, vectors.layers, attributes, attribute, method,
            folds=args.folds, pca_components=args.pca_components,
        )  # fmt: skip
        art = fit_probe(vectors.samples, vectors.persona_ids, vectors.layers, attributes, curve)
        art.meta |= {"model": vectors.model, "vectors": vectors.label, "ordinal": order}
        results.append((curve, save_probe_artifact(art, out / f"{slug(attribute)}-{method}")))
    return results, notes


def _cmd_probe(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pvrs.analysis import report as analyze
    from pvrs.analysis.probes import attribute_names, load_persona_attributes, ordinal_ranks
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.extraction.masks import parse_strategies

    model = canonical_model_name(args.model)
    strategies = [str(s) for s in parse_strategies([args.mask_strategy])]
    if len(strategies) != 1:
        raise InputError(f"--mask-strategy {args.mask_strategy!r}: pvrs probe takes one strategy")
    strategy = strategies[0]
    orders = parse_ordinal(args.ordinal)
    console = Console(stderr=True)
    variants = [args.variant] if args.variant else None
    vectors = analyze.read_vector_sets(model, args.source, [strategy], variants, args.layers)[0]
    if not args.layers and not args.all_layers:
        keep = fast_layers(vectors.layers)
        index = [vectors.layers.index(layer) for layer in keep]
        vectors = analyze.VectorSet(
            vectors.mask_strategy, vectors.variant, vectors.persona_ids, vectors.names, keep,
            vectors.samples[:, index], vectors.model,
        )  # fmt: skip
    attributes = (
        load_persona_attributes(args.persona_file)
        if args.persona_file
        else analyze.builtin_attributes_for(vectors.persona_ids)
    ) or {}
    _check_attributes(args.persona_file, attributes, vectors.persona_ids)
    known = attribute_names(attributes)
    wanted = list(args.attribute or known)
    for name in [*wanted, *orders]:
        if name not in known:
            raise InputError(
                f"--attribute/--ordinal {name!r} is not a column of the persona file (have "
                f"{', '.join(known) or 'none'}); pass --persona-file with that column"
            )
    for name, order in orders.items():  # an order missing a value fails before any probe is saved
        ordinal_ranks(attributes, name, order)
    out = Path(args.out) if args.out else (
        Path("probes") / model_dir_name(model) / strategy / vectors.variant
    )
    check_writable("--out", out, is_dir=True)
    table = Table(title=f"probes on {vectors.label}, layers {vectors.layers}")
    for name in ("attribute", "method", "task", "best layer", "score", "shuffled best", "saved"):
        table.add_column(name, justify="right" if name in ("best layer", "score", "shuffled best") else "left")
    with writing(out):
        for attribute in wanted:
            try:
                results, notes = _probe_one(
                    vectors, attributes, attribute, args, orders.get(attribute), out
                )
            except InputError as exc:
                if args.attribute or attribute in orders:  # named on the command line: must work
                    raise
                console.print(f"[yellow]note:[/] {escape(f'probe on {attribute!r} skipped: {exc}')}")
                continue
            for note in notes:
                console.print(f"[yellow]note:[/] {escape(note)}")  # attribute names are not markup
            for curve, saved in results:
                best = curve.scores[curve.layers.index(curve.best_layer)]
                task = "ordinal" if attribute in orders else curve.task
                table.add_row(
                    escape(attribute), curve.method, task, str(curve.best_layer),
                    f"{curve.primary} {best:.3f}", f"{curve.shuffled_best:.3f}", escape(str(saved)),
                )  # fmt: skip
    if not table.row_count:
        raise InputError("no attribute could be probed (see the notes above)")
    Console(width=200).print(table)
    return 0


def _check_attributes(persona_file: str | None, attributes: dict[str, dict[str, Any]], persona_ids: Sequence[str]) -> None:
    """Fail with the fix when there is nothing to probe, rather than print an empty table."""
    from pvrs.analysis.probes import attribute_names

    if persona_file is None and not attributes:
        raise InputError("the vectors are not of the built-in personas, so they have no known attributes; "
                         "pass --persona-file with the personas' attribute columns")
    if not attribute_names(attributes):
        raise InputError(f"--persona-file {persona_file}: no attribute columns (beyond id, name, templated and "
                         "biography) to probe; add some, e.g. a 'kind' field per persona")
    if not set(attributes) & set(persona_ids):
        raise InputError(f"--persona-file {persona_file}: none of its persona ids are among the vectors' "
                         f"({', '.join(persona_ids[:3])}, ...); pass the file the vectors were extracted from")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    from pvrs.engines.models import DEFAULT_MODEL
    from pvrs.extraction.masks import DEFAULT_STRATEGY

    p = sub.add_parser(
        "probe",
        help="cross-validated linear probes from persona vectors to persona attributes",
        description="Probe stored persona vectors for the persona file's attributes: per "
        "attribute and method, scores cross-validated at each layer, a shuffled-label level to "
        "beat, and the best layer's probe saved as probe.json + weights.safetensors.",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="model id or built-in name (default: %(default)s)"
    )
    p.add_argument("--source", metavar="DIR|ORG/NAME", help=SOURCE_HELP)
    p.add_argument(
        "--mask-strategy",
        default=str(DEFAULT_STRATEGY),
        help="mask strategy of the vectors (default: %(default)s)",
    )
    p.add_argument("--variant", help="prompt variant (default: the first one saved)")
    layers = p.add_mutually_exclusive_group()
    layers.add_argument(
        "--layers",
        nargs="+",
        metavar="L",
        help="layers to sweep: numbers or ranges like 4-12 (default: five evenly spaced)",
    )
    layers.add_argument(
        "--all-layers", action="store_true", help="sweep every layer (default: five evenly spaced)"
    )
    p.add_argument(
        "--persona-file",
        help="persona file (JSONL/JSON/parquet) whose extra columns are probed "
        "(default: the built-in personas' attributes)",
    )
    p.add_argument(
        "--attribute",
        nargs="+",
        action=UniqueList,
        metavar="A",
        help="attributes to probe (default: every one)",
    )
    p.add_argument(
        "--ordinal",
        action="append",
        metavar="ATTR=LOW,...,HIGH",
        help="an ordered attribute and its order, probed as a regression on ranks "
        "(default: none); repeatable",
    )
    p.add_argument(
        "--method",
        nargs="+",
        action=UniqueList,
        choices=METHODS,
        metavar="M",
        help="probe methods: logistic, ridge, diffmeans (default: all that fit the attribute)",
    )
    p.add_argument(
        "--pca-components",
        type=positive_int,
        help="reduce vectors to this many principal components inside each fold before the "
        "probe (default: none, raw vectors)",
    )
    p.add_argument(
        "--min-class-count",
        type=positive_int,
        default=2,
        help="classes with fewer personas are left out and reported (default: %(default)s)",
    )
    p.add_argument(
        "--folds", type=positive_int, default=5, help="cross-validation folds (default: %(default)s)"
    )
    p.add_argument(
        "--out", help="output folder (default: probes/<model>/<strategy>/<variant>)"
    )
    p.set_defaults(handler=_cmd_probe)


def register(sub: argparse._SubParsersAction) -> None:
    _add_probe(sub)
