"""The sections of the `pvrs analyze` report: which figure goes under which title and
caption, given what the run found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pvrs.analysis import compute as an
from pvrs.analysis import curves, export, plots

if TYPE_CHECKING:  # the report module imports this one
    from pvrs.analysis.report import VectorSet


@dataclass(frozen=True)
class Findings:
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


def report_sections(f: Findings) -> list[export.Section]:
    names, focus, sim, pca, axis = f.main.names, f.focus, f.sim, f.pca, f.axis
    slide = _SLIDE if len(f.main.layers) > 1 else "At the focus layer."
    S = export.Section
    out = [
        S(
            "layer_curves",
            "Layer curves",
            "Vector norm by layer (mean ± std over personas) and how far personas sit from their centroid, relative to the norm: a high relative spread marks a layer where personas differ most.",
            curves.layer_curves_figure(f.curves),
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
                curves.axis_layers_figure(axis),
            )
        )
    if f.variant_agreements:
        out.append(
            S(
                "variant_agreement",
                "Agreement between prompt variants",
                "Cosine between a persona's vectors from two prompt variants (line: mean over personas; band: min to max).",
                curves.agreement_figure(f.variant_agreements, "Variant agreement by layer"),
            )
        )
    if f.strategy_agreements:
        out.append(
            S(
                "strategy_agreement",
                "Agreement between mask strategies",
                "Cosine between a persona's vectors from two mask strategies (line: mean; band: min to max).",
                curves.agreement_figure(f.strategy_agreements, "Strategy agreement by layer"),
            )
        )
    if f.probe_curves:
        out.append(
            S(
                "probes",
                "Linear probes",
                "Cross-validated score of linear probes from persona vectors to persona attributes, by layer (balanced accuracy for categories, R² for numbers; dotted: chance). The best layer's score is a maximum over layers, so it is optimistic: summary.json gives the maximum the same sweep reaches with shuffled labels next to it.",
                curves.probe_figure(f.probe_curves),
            )
        )
    return out
