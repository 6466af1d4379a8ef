"""`pvrs analyze`: read persona vectors from a local store or a Hub dataset, run every
analysis of `pvrs.analysis.compute` / `pvrs.analysis.probes`, and write an HTML report, one PNG per figure
and machine-readable tables into one folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvrs.analysis import compute as an
from pvrs.analysis import export
from pvrs.analysis.findings import Findings, VectorSet
from pvrs.analysis.sections import report_sections
from pvrs.analysis.tables import (
    ALL_LAYER_SIMILARITY_MAX,
    agreement_table,
    axis_tables,
    geometry_tables,
    layer_span,
    layer_table,
    neighbour_tables,
    pca_tables,
    probe_table,
    similarity_tables,
    slug,
    summary_of,
)
from pvrs.errors import InputError
from pvrs.hub.vector_sources import open_store
from pvrs.store.layerspec import parse_layers

PROBE_METHODS = ("logistic", "ridge", "diffmeans")


# ---- reading ---------------------------------------------------------------------------


def read_vector_sets(
    model: str,
    source: str | Path | None,
    mask_strategies: Sequence[str],
    variants: Sequence[str] | None,
    layers: Sequence[str] | None,
    *,
    skip_missing: bool = False,
) -> list[VectorSet]:
    """Every (strategy, variant) requested, each with all its personas (baseline
    included) on the selected layers. The first set is the primary one. A strategy with
    no vectors is an error, or skipped with `skip_missing` (but one must have some)."""
    from pvrs.store import load_analysis_dataset

    sets: list[VectorSet] = []
    chosen_layers: list[int] | None = None
    for strategy in mask_strategies:
        store = open_store(model, source, strategy)
        have = store.available_variants(variants)
        if not have:
            if skip_missing:
                continue
            raise InputError(_empty_store_message(model, source, strategy, variants))
        missing = [v for v in variants or () if v not in have]
        if missing:
            raise InputError(
                f"--variant {missing[0]}: no {strategy} vectors for it (saved: {', '.join(have)})"
            )
        for variant in have:
            ds = load_analysis_dataset(store, [variant], include_baseline=True)
            if chosen_layers is None:
                chosen_layers = parse_layers(layers, ds.layers) if layers else list(ds.layers)
            missing = [layer for layer in chosen_layers if layer not in ds.layers]
            if missing:
                raise InputError(
                    f"{strategy}/{variant} has no layer {missing[0]} (0..{len(ds.layers) - 1})"
                )
            samples = ds.samples(variant, chosen_layers)
            sets.append(
                VectorSet(
                    strategy, variant, ds.persona_ids, ds.names, chosen_layers, samples, model
                )
            )
    if not sets:
        raise InputError(_empty_store_message(model, source, "any", variants))
    return sets


def _empty_store_message(
    model: str, source: str | Path | None, strategy: str, variants: Sequence[str] | None
) -> str:
    from pvrs.paths import activations_dir
    from pvrs.store import discover_activation_models

    where = str(source) if source is not None else str(activations_dir())
    which = f" for variant(s) {', '.join(variants)}" if variants else ""
    msg = f"no persona vectors for model {model!r}, mask strategy {strategy!r}{which} in {where}"
    others = discover_activation_models(
        source if source is not None and Path(source).is_dir() else None, strategy
    )
    if others:
        return msg + f"; models with vectors there: {', '.join(others)} (pass --model)"
    return msg + f"; run `pvrs extract --model {model}` first, or pass --source"


def builtin_attributes_for(persona_ids: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """The built-in demo personas' attributes when the vectors are of those personas (the
    demo artifacts of `pvrs extract` with no arguments), else None."""
    from pvrs.analysis.probes import load_persona_attributes

    builtin = load_persona_attributes()
    roles = [p for p in persona_ids if p != an.BASELINE_ID]
    return builtin if roles and all(p in builtin for p in roles) else None


# ---- running ---------------------------------------------------------------------------


@dataclass
class ReportOptions:
    # None: the baseline when it was extracted (else the axis is skipped with a note);
    # ids given explicitly must exist.
    default_ids: Sequence[str] | None = None
    focus_layer: int | None = None
    attributes: dict[str, dict[str, Any]] | None = None
    probe_attributes: Sequence[str] | None = None
    probe_methods: Sequence[str] = PROBE_METHODS
    folds: int = 5
    neighbours: int = 5
    # k-means, Isomap, UMAP and the dendrogram on vectors normalised as
    # `geometry.NORMALISATIONS` names; None skips them.
    geometry: str | None = "center"
    png: bool = True
    title: str = "pvrs analysis"
    facts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportResult:
    out_dir: Path
    html: Path
    pngs: list[Path]
    tables: list[Path]
    probes: list[Path]
    summary: dict[str, Any]
    notes: list[str]


def run_analysis(
    sets: Sequence[VectorSet],
    out_dir: str | Path,
    options: ReportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Analyse `sets[0]` in full, compare it with the other sets (variant and strategy
    agreement), and write everything under `out_dir`."""
    opts = options or ReportOptions()
    if opts.neighbours < 1 or opts.folds < 2:
        raise InputError("--neighbours must be >= 1 and --folds >= 2")
    step = progress or (lambda _msg: None)
    out = Path(out_dir)
    tables_dir = out / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    main = sets[0]
    x, ids, names, layers = main.samples, main.persona_ids, main.names, main.layers
    an.check_samples(x, ids, main.label)
    an.require_personas(len(ids), 2, f"analysing {main.label} (similarity, PCA)")
    # The middle layer, as in the persona-vector and assistant-axis papers; the layer
    # curves, PC1 and the summary point at others worth a look.
    focus = layers[len(layers) // 2] if opts.focus_layer is None else opts.focus_layer
    an.layer_position(layers, focus)
    notes: list[str] = []
    tables: list[Path] = []

    step("similarity, PCA, layer curves")
    sim = an.similarity_by_layer(x, ids, layers)
    pca = an.pca_by_layer(x, ids, layers)
    curves = an.layer_curves(x, ids, layers)

    axis = None
    try:
        axis = an.assistant_axis(x, ids, layers, opts.default_ids or (an.BASELINE_ID,), pca=pca)
    except InputError as exc:
        if opts.default_ids:
            raise
        notes.append(f"assistant axis skipped: {exc}")

    step("agreement between variants and strategies")
    variant_pairs = [
        (a, b)
        for i, a in enumerate(sets)
        for b in sets[i + 1 :]
        if a.mask_strategy == b.mask_strategy
    ]
    strategy_pairs = [
        (main, s)
        for s in sets[1:]
        if s.variant == main.variant and s.mask_strategy != main.mask_strategy
    ]
    variant_agreements = _agreements(variant_pairs, layers)
    strategy_agreements = _agreements(strategy_pairs, layers)

    geometry = None
    if opts.geometry is not None:
        from pvrs.analysis.geometry import geometry_views

        step("geometry: k-means, Isomap, UMAP, dendrogram")
        geometry = geometry_views(x, ids, layers, opts.geometry, notes)

    probe_curves, probe_dirs = _run_probes(main, opts, out / "probes", notes, step)

    step("writing tables")
    tables += similarity_tables(sim, focus, tables_dir)
    if sim.raw.size > ALL_LAYER_SIMILARITY_MAX:
        notes.append(
            "similarity for every layer not saved (too large); tables hold the focus layer, "
            "and pvrs.analysis.similarity_by_layer computes the others"
        )
    tables += neighbour_tables(
        x[:, an.layer_position(layers, focus)], ids, opts.neighbours, tables_dir
    )
    tables += pca_tables(pca, names, focus, tables_dir)
    tables.append(layer_table(curves, pca, axis, tables_dir / "layer_curves.csv"))
    for name, results in (
        ("variant_agreement", variant_agreements),
        ("strategy_agreement", strategy_agreements),
    ):
        if results:
            tables.append(agreement_table(results, tables_dir / f"{name}.csv"))
    if axis is not None:
        tables += axis_tables(axis, names, out)
    if probe_curves:
        tables.append(probe_table(probe_curves, tables_dir / "probe_scores.csv"))
    if geometry is not None:
        tables += geometry_tables(geometry, ids, names, layers, focus, tables_dir)

    findings = Findings(
        main,
        focus,
        sim,
        pca,
        curves,
        axis,
        variant_agreements,
        strategy_agreements,
        probe_curves,
        geometry,
        opts.attributes,
    )
    sections = report_sections(findings)
    summary = summary_of(findings, probe_dirs, notes)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tables.append(summary_path)

    pngs: list[Path] = []
    if opts.png:
        step(f"rendering {len(sections)} PNGs")
        pngs = export.write_pngs(sections, out / "png")
    step("writing the HTML report")
    facts = [
        *opts.facts,
        ("vectors", main.label),
        ("personas", str(len(ids))),
        ("layers", layer_span(layers)),
        (
            "focus layer",
            f"{focus} ({'middle layer' if opts.focus_layer is None else 'chosen'}; "
            f"most between-persona spread at layer {curves.best_layer})",
        ),
        ("PC1 explains most at layer", f"{pca.best_layer} ({pca.explained_ratio[:, 0].max():.0%})"),
        *(("note", n) for n in notes),
    ]
    links = [(p.relative_to(out).as_posix(), p.relative_to(out).as_posix()) for p in tables]
    html = export.write_html(sections, out / "report.html", opts.title, facts, links)
    return ReportResult(out, html, pngs, tables, probe_dirs, summary, notes)


def _agreements(
    pairs: Sequence[tuple[VectorSet, VectorSet]], layers: list[int]
) -> list[an.AgreementResult]:
    """Raw and centered agreement of every pair."""
    return [
        an.agreement(
            a.samples,
            a.persona_ids,
            b.samples,
            b.persona_ids,
            layers,
            (a.label, b.label),
            centered=c,
        )
        for a, b in pairs
        for c in (False, True)
    ]


def _run_probes(
    main: VectorSet,
    opts: ReportOptions,
    probes_dir: Path,
    notes: list[str],
    step: Callable[[str], None],
) -> tuple[list[Any], list[Path]]:
    """Cross-validate every (attribute, method) that fits; save the best-layer probe of
    each. Attributes the user named must work; others that cannot be probed are noted."""
    if not opts.attributes:
        return [], []
    from pvrs.analysis.probe_artifacts import save_probe_artifact
    from pvrs.analysis.probes import (
        attribute_names,
        cross_validate_probe,
        fit_probe,
        probe_labels,
    )

    wanted = (
        list(opts.probe_attributes) if opts.probe_attributes else attribute_names(opts.attributes)
    )
    known = set(attribute_names(opts.attributes))
    for name in wanted:
        if name not in known:
            raise InputError(
                f"--attribute {name!r} is not a column of the persona file (have {sorted(known)})"
            )
    curves, dirs = [], []
    for attribute in wanted:
        try:
            task = probe_labels(main.persona_ids, opts.attributes, attribute)[2]
            attrs = opts.attributes
            if task == "classification":
                attrs = _drop_rare_classes(attrs, main.persona_ids, attribute, notes)
            for method in opts.probe_methods:
                if task == "regression" and method != "ridge":
                    continue  # logistic and difference of means need categories
                step(f"probe {attribute} / {method}")
                curve = cross_validate_probe(
                    main.samples,
                    main.persona_ids,
                    main.layers,
                    attrs,
                    attribute,
                    method,
                    folds=opts.folds,
                )
                art = fit_probe(main.samples, main.persona_ids, main.layers, attrs, curve)
                art.meta |= {"model": main.model, "vectors": main.label}
                dirs.append(save_probe_artifact(art, probes_dir / f"{slug(attribute)}-{method}"))
                curves.append(curve)
        except InputError as exc:
            if opts.probe_attributes:  # named on the command line: must work
                raise
            notes.append(f"probe on {attribute!r} skipped: {exc}")
    if wanted and not curves:
        notes.append("no attribute could be probed")
    return curves, dirs


def _drop_rare_classes(
    attributes: dict[str, dict[str, Any]],
    persona_ids: Sequence[str],
    attribute: str,
    notes: list[str],
) -> dict[str, dict[str, Any]]:
    """Leave out personas whose class of `attribute` has a single member among
    `persona_ids` (cross-validation cannot score it), saying so in `notes`; `InputError`
    when fewer than two classes are left."""
    from pvrs.analysis.probes import drop_rare_classes

    kept, _ = drop_rare_classes(attributes, persona_ids, attribute, 2)
    left_out = sorted(p for p in persona_ids if attribute in attributes.get(p, {}) and attribute not in kept[p])
    if left_out:
        notes.append(
            f"probe on {attribute!r}: left out {len(left_out)} persona(s) whose class has a single "
            f"member ({', '.join(left_out)})"
        )
    return kept
