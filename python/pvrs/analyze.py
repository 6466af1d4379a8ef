"""`pvrs analyze`: read persona vectors from a local store or a Hub dataset, run every
analysis of `pvrs.analysis` / `pvrs.probes`, and write an HTML report, one PNG per figure
and machine-readable tables into one folder."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pvrs import analysis as an
from pvrs import plots
from pvrs.errors import InputError
from pvrs.layerspec import parse_layers
from pvrs.sources import open_store

PROBE_METHODS = ("logistic", "ridge", "diffmeans")
# Past this many values (personas^2 x layers, e.g. 700 personas x 40 layers) the all-layer
# similarity file is skipped: the focus layer's CSVs remain. The HTML report's layer slider
# on the heatmaps has its own, lower cap on the same count (`plots.SIMILARITY_SLIDER_MAX`).
ALL_LAYER_SIMILARITY_MAX = 20_000_000


# ---- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorSet:
    """Persona vectors of one mask strategy and prompt variant, `samples` `(P, L, H)`."""

    mask_strategy: str
    variant: str
    persona_ids: list[str]
    names: list[str]
    layers: list[int]
    samples: np.ndarray
    model: str = ""

    @property
    def label(self) -> str:
        return f"{self.mask_strategy}/{self.variant}"


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
    from pvrs.probes import load_persona_attributes

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

    probe_curves, probe_dirs = _run_probes(main, opts, out / "probes", notes, step)

    step("writing tables")
    tables += _similarity_tables(sim, focus, tables_dir)
    if sim.raw.size > ALL_LAYER_SIMILARITY_MAX:
        notes.append(
            "similarity for every layer not saved (too large); tables hold the focus layer, "
            "and pvrs.analysis.similarity_by_layer computes the others"
        )
    tables += _neighbour_tables(
        x[:, an.layer_position(layers, focus)], ids, opts.neighbours, tables_dir
    )
    tables += _pca_tables(pca, names, focus, tables_dir)
    tables.append(_layer_table(curves, pca, axis, tables_dir / "layer_curves.csv"))
    for name, results in (
        ("variant_agreement", variant_agreements),
        ("strategy_agreement", strategy_agreements),
    ):
        if results:
            tables.append(_agreement_table(results, tables_dir / f"{name}.csv"))
    if axis is not None:
        tables += _axis_tables(axis, names, out)
    if probe_curves:
        tables.append(_probe_table(probe_curves, tables_dir / "probe_scores.csv"))

    findings = _Findings(
        main, focus, sim, pca, curves, axis, variant_agreements, strategy_agreements, probe_curves
    )
    sections = _sections(findings)
    summary = _summary(findings, probe_dirs, notes)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tables.append(summary_path)

    pngs: list[Path] = []
    if opts.png:
        step(f"rendering {len(sections)} PNGs")
        pngs = plots.write_pngs(sections, out / "png")
    step("writing the HTML report")
    facts = [
        *opts.facts,
        ("vectors", main.label),
        ("personas", str(len(ids))),
        ("layers", _layer_span(layers)),
        (
            "focus layer",
            f"{focus} ({'middle layer' if opts.focus_layer is None else 'chosen'}; "
            f"most between-persona spread at layer {curves.best_layer})",
        ),
        ("PC1 explains most at layer", f"{pca.best_layer} ({pca.explained_ratio[:, 0].max():.0%})"),
        *(("note", n) for n in notes),
    ]
    links = [(p.relative_to(out).as_posix(), p.relative_to(out).as_posix()) for p in tables]
    html = plots.write_html(sections, out / "report.html", opts.title, facts, links)
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
    from pvrs.probes import (
        attribute_names,
        cross_validate_probe,
        fit_probe,
        probe_labels,
        save_probe_artifact,
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
                dirs.append(save_probe_artifact(art, probes_dir / f"{_slug(attribute)}-{method}"))
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
    values = {p: attributes.get(p, {}).get(attribute) for p in persona_ids}
    counts: dict[str, int] = {}
    for v in values.values():
        if v is not None:
            counts[str(v)] = counts.get(str(v), 0) + 1
    rare = {p for p, v in values.items() if v is not None and counts[str(v)] < 2}
    if not rare:
        return attributes
    if sum(c >= 2 for c in counts.values()) < 2:
        raise InputError(
            f"attribute {attribute!r}: fewer than two of its classes have 2+ personas, "
            "so there is nothing to cross-validate"
        )
    notes.append(
        f"probe on {attribute!r}: left out {len(rare)} persona(s) whose class has a single "
        f"member ({', '.join(sorted(rare))})"
    )
    return {
        p: {k: v for k, v in a.items() if k != attribute} if p in rare else a
        for p, a in attributes.items()
    }


# ---- sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Findings:
    """What the analysis found, as the report's figures and summary use it."""

    main: VectorSet
    focus: int
    sim: an.SimilarityResult
    pca: an.PCAResult
    curves: an.LayerCurves
    axis: an.AxisResult | None
    variant_agreements: list[an.AgreementResult]
    strategy_agreements: list[an.AgreementResult]
    probe_curves: list[Any]


# How the per-layer figures read when there are several layers; PNGs show the focus layer.
_SLIDE = "The slider moves through the analysed layers; it starts at (and the PNG shows) the focus layer."


def _sections(f: _Findings) -> list[plots.Section]:
    names, focus, sim, pca, axis = f.main.names, f.focus, f.sim, f.pca, f.axis
    slide = _SLIDE if len(f.main.layers) > 1 else "At the focus layer."
    S = plots.Section
    out = [
        S(
            "layer_curves",
            "Layer curves",
            "Vector norm by layer (mean ± std over personas) and how far personas sit from their centroid, relative to the norm: a high relative spread marks a layer where personas differ most.",
            plots.layer_curves_figure(f.curves),
        ),
        S(
            "similarity",
            "Persona similarity",
            "Cosine similarity between personas, raw (own colour range: they crowd near 1) and centered (the mean over personas subtracted, which removes what every persona shares). "
            + (
                f"{slide} Rows are in the hierarchical-clustering order of the focus layer on every layer, so each persona keeps its row."
                if plots.similarity_slides(sim)
                else f"Focus layer only: {len(names)} personas over {len(sim.layers)} layers would make the page too large to slide through (the tables hold every layer). Rows are in hierarchical-clustering order."
            ),
            plots.similarity_figure(sim, names, focus),
        ),
        S(
            "pca_scree",
            "PCA: explained variance",
            f"Share of between-persona variance explained by each principal component, and by PC1 at every layer. {slide}",
            plots.scree_figure(pca, focus),
        ),
    ]
    color = None if axis is None else axis.projections
    label = "assistant axis" if axis is not None else ""
    if pca.projections.shape[2] >= 2:
        out.append(
            S(
                "pca_2d",
                "PCA: personas in 2-D",
                f"Personas on PC1 and PC2; colour: projection on the assistant axis. {slide}",
                plots.pca_scatter_figure(pca, names, focus, color=color, color_label=label),
            )
        )
    if pca.projections.shape[2] >= 3:
        out.append(
            S(
                "pca_3d",
                "PCA: personas in 3-D",
                f"Personas on the first three components (rotate it in the HTML report). {slide}",
                plots.pca_scatter_figure(pca, names, focus, dims=3, color=color, color_label=label),
            )
        )
    if axis is not None:
        out.append(
            S(
                "axis_projection",
                "The assistant axis: personas",
                f"Mean of the default personas ({', '.join(axis.default_ids)}) minus the mean of the role personas, normalised; each persona's position along it (0 is the role mean). {slide}",
                plots.axis_projection_figure(axis, names, focus),
            )
        )
        out.append(
            S(
                "axis_layers",
                "The assistant axis by layer",
                "Length of the axis before normalising, and how well it lines up with PC1 (|cosine|).",
                plots.axis_layers_figure(axis),
            )
        )
    if f.variant_agreements:
        out.append(
            S(
                "variant_agreement",
                "Agreement between prompt variants",
                "Cosine between a persona's vectors from two prompt variants (line: mean over personas; band: min to max).",
                plots.agreement_figure(f.variant_agreements, "Variant agreement by layer"),
            )
        )
    if f.strategy_agreements:
        out.append(
            S(
                "strategy_agreement",
                "Agreement between mask strategies",
                "Cosine between a persona's vectors from two mask strategies (line: mean; band: min to max).",
                plots.agreement_figure(f.strategy_agreements, "Strategy agreement by layer"),
            )
        )
    if f.probe_curves:
        out.append(
            S(
                "probes",
                "Linear probes",
                "Cross-validated score of linear probes from persona vectors to persona attributes, by layer (balanced accuracy for categories, R² for numbers; dotted: chance). The best layer's score is a maximum over layers, so it is optimistic: summary.json gives the maximum the same sweep reaches with shuffled labels next to it.",
                plots.probe_figure(f.probe_curves),
            )
        )
    return out


# ---- tables ----------------------------------------------------------------------------


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[_cell(v) for v in row] for row in rows])
    return path


def _cell(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return v


def _similarity_tables(sim: an.SimilarityResult, focus: int, d: Path) -> list[Path]:
    raw, cen, order = sim.at(focus)
    ids = [sim.persona_ids[i] for i in order]
    out = []
    for name, mat in (("similarity_raw", raw), ("similarity_centered", cen)):
        m = mat[np.ix_(order, order)]
        out.append(
            _write_csv(
                d / f"{name}.csv",
                ["persona_id", *ids],
                [[pid, *row] for pid, row in zip(ids, m, strict=True)],
            )
        )
    if sim.raw.size <= ALL_LAYER_SIMILARITY_MAX:
        npz = d / "similarity_all_layers.npz"
        np.savez_compressed(
            npz,
            layers=np.array(sim.layers),
            persona_ids=np.array(sim.persona_ids),
            raw=sim.raw,
            centered=sim.centered,
        )
        out.append(npz)
    return out


def _neighbour_tables(x: np.ndarray, ids: list[str], k: int, d: Path) -> list[Path]:
    dist = an.distance_table(x)
    distances = _write_csv(
        d / "distances.csv",
        ["persona_id", *ids],
        [[pid, *row] for pid, row in zip(ids, dist, strict=True)],
    )
    rows = [
        [pid, rank + 1, n.persona_id, n.cosine]
        for pid in ids
        for rank, n in enumerate(an.nearest_neighbours(x, ids, pid, k))
    ]
    return [
        distances,
        _write_csv(
            d / "neighbours.csv", ["persona_id", "rank", "neighbour_id", "centered_cosine"], rows
        ),
    ]


def _pca_tables(pca: an.PCAResult, names: list[str], focus: int, d: Path) -> list[Path]:
    k = pca.explained_ratio.shape[1]
    pcs = [f"pc{i + 1}" for i in range(k)]
    ev = _write_csv(
        d / "pca_explained_variance.csv",
        ["layer", *pcs],
        [[layer, *r] for layer, r in zip(pca.layers, pca.explained_ratio, strict=True)],
    )
    proj = pca.projections[an.layer_position(pca.layers, focus)]
    pr = _write_csv(
        d / "pca_projections.csv",
        ["persona_id", "name", *pcs],
        [[pid, n, *p] for pid, n, p in zip(pca.persona_ids, names, proj, strict=True)],
    )
    return [ev, pr]


def _layer_table(
    curves: an.LayerCurves, pca: an.PCAResult, axis: an.AxisResult | None, path: Path
) -> Path:
    header = ["layer", "norm_mean", "norm_std", "spread", "relative_spread", "pc1_ratio"]
    cols = [
        curves.layers,
        curves.norm_mean,
        curves.norm_std,
        curves.spread,
        curves.relative_spread,
        pca.explained_ratio[:, 0],
    ]
    if axis is not None:
        header += ["axis_norm", "axis_cos_pc1"]
        cols += [axis.norm, axis.cos_pc1]
    return _write_csv(path, header, list(zip(*cols, strict=True)))


def _agreement_table(results: list[an.AgreementResult], path: Path) -> Path:
    layers = results[0].layers
    rows = [
        [r.label_a, r.label_b, r.centered, pid, *cos]
        for r in results
        for pid, cos in [("(mean)", r.mean_by_layer), *zip(r.persona_ids, r.cosine, strict=True)]
    ]
    header = ["a", "b", "centered", "persona_id", *[f"layer_{layer}" for layer in layers]]
    return _write_csv(path, header, rows)


def _axis_tables(axis: an.AxisResult, names: list[str], out: Path) -> list[Path]:
    from safetensors.numpy import save_file

    defaults = set(axis.default_ids)
    proj = _write_csv(
        out / "tables" / "assistant_axis_projections.csv",
        ["persona_id", "name", "is_default", *[f"layer_{layer}" for layer in axis.layers]],
        [
            [pid, n, pid in defaults, *row]
            for pid, n, row in zip(axis.persona_ids, names, axis.projections, strict=True)
        ],
    )
    vec = out / "assistant_axis.safetensors"
    save_file(
        {"axis": np.ascontiguousarray(axis.axis), "norm": axis.norm.astype(np.float32)},
        str(vec),
        metadata={"layers": json.dumps(axis.layers), "default_ids": json.dumps(axis.default_ids)},
    )
    return [proj, vec]


def _probe_table(curves: list[Any], path: Path) -> Path:
    rows = [
        [
            c.attribute,
            c.method,
            c.task,
            layer,
            *(
                m.get(k, "")
                for k in ("accuracy", "balanced_accuracy", "chance", "majority", "r2", "pearson_r", "mae")
            ),
        ]
        for c in curves
        for layer, m in zip(c.layers, c.metrics, strict=True)
    ]
    return _write_csv(
        path,
        [
            "attribute",
            "method",
            "task",
            "layer",
            "accuracy",
            "balanced_accuracy",
            "chance",
            "majority",
            "r2",
            "pearson_r",
            "mae",
        ],
        rows,
    )


def _summary(f: _Findings, probe_dirs: list[Path], notes: list[str]) -> dict[str, Any]:
    main, focus, sim, pca, axis = f.main, f.focus, f.sim, f.pca, f.axis
    fi = an.layer_position(main.layers, focus)
    summary: dict[str, Any] = {
        "model": main.model,
        "vectors": main.label,
        "mask_strategy": main.mask_strategy,
        "variant": main.variant,
        "n_personas": len(main.persona_ids),
        "persona_ids": main.persona_ids,
        "layers": main.layers,
        "hidden_size": int(main.samples.shape[2]),
        "focus_layer": focus,
        "most_spread_layer": f.curves.best_layer,
        "pc1_best_layer": pca.best_layer,
        "pc1_ratio_at_focus": float(pca.explained_ratio[fi, 0]),
        "mean_centered_cosine_at_focus": float(_off_diagonal_mean(sim.centered[fi])),
        "mean_raw_cosine_at_focus": float(_off_diagonal_mean(sim.raw[fi])),
        "notes": notes,
    }
    if axis is not None:
        summary["assistant_axis"] = {
            "default_ids": axis.default_ids,
            "n_roles": len(axis.role_ids),
            "norm_at_focus": float(axis.norm[fi]),
            "cos_pc1_at_focus": None if axis.cos_pc1 is None else float(axis.cos_pc1[fi]),
            "file": "assistant_axis.safetensors",
        }
    summary["agreement"] = [
        {
            "a": r.label_a,
            "b": r.label_b,
            "centered": r.centered,
            "n_personas": len(r.persona_ids),
            "mean_by_layer": r.mean_by_layer.round(6).tolist(),
        }
        for r in (*f.variant_agreements, *f.strategy_agreements)
    ]
    summary["probes"] = [
        {
            "attribute": c.attribute,
            "method": c.method,
            "metric": c.primary,
            "best_layer": c.best_layer,
            # A maximum over layers: compare it with the same maximum on shuffled labels.
            "score": float(np.nanmax(c.scores)),
            "shuffled_labels_score": c.shuffled_best,
            "artifact": str(d),
        }
        for c, d in zip(f.probe_curves, probe_dirs, strict=True)
    ]
    return summary


def _off_diagonal_mean(m: np.ndarray) -> float:
    n = m.shape[0]
    return float((m.sum() - np.trace(m)) / (n * (n - 1))) if n > 1 else 0.0


def _layer_span(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return ", ".join(map(str, layers))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "attribute"
