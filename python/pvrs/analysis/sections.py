"""The sections of the `pvrs analyze` report: which figure goes under which title and
caption, given what the run found."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvrs.analysis import curves, export, plots
from pvrs.analysis import geometry_plots as gp
from pvrs.analysis.findings import Findings

if TYPE_CHECKING:
    from pvrs.analysis.geometry import GeometryViews


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
    colourings = f.colourings()
    menu = f" Colour: {_colour_caption(colourings)}." if colourings else ""
    if pca.projections.shape[2] >= 2:
        out.append(
            S(
                "pca_2d",
                "PCA: personas in 2-D",
                f"Personas on PC1 and PC2.{menu} {slide}",
                gp.colour_menu(plots.pca_scatter_figure(pca, names, focus), colourings),
            )
        )
    if pca.projections.shape[2] >= 3:
        out.append(
            S(
                "pca_3d",
                "PCA: personas in 3-D",
                f"Personas on the first three components (rotate it in the HTML report).{menu} {slide}",
                gp.colour_menu(plots.pca_scatter_figure(pca, names, focus, dims=3), colourings),
            )
        )
    if f.geometry is not None:
        out += _geometry_sections(f.geometry, f, colourings, menu, slide)
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


def _colour_caption(colourings: list[gp.Colouring]) -> str:
    first = colourings[0].name
    if len(colourings) == 1:
        return f"{first}"
    return f"{first}; the menu on the right switches to " + ", ".join(c.name for c in colourings[1:])


# What `--geometry-normalize` did to the vectors, for the captions.
_NORMALISED = {
    "none": "raw vectors",
    "center": "centred vectors (the mean persona subtracted)",
    "unit": "vectors scaled to unit norm",
    "center-unit": "centred vectors scaled to unit norm",
}


def _geometry_sections(
    g: GeometryViews, f: Findings, colourings: list[gp.Colouring], menu: str, slide: str
) -> list[export.Section]:
    names, layers, focus, how = f.main.names, f.main.layers, f.focus, _NORMALISED[g.normalize]
    S = export.Section
    out = [
        S(
            method,
            f"{gp.EMBEDDING_LABELS[method]}: personas in 2-D",
            f"A non-linear 2-D map of the personas ({gp.EMBEDDING_LABELS[method]} on {how}): near personas stay near.{menu} {slide}",
            gp.colour_menu(gp.embedding_figure(coords, layers, names, focus, method), colourings),
        )
        for method, coords in g.embeddings.items()
    ]
    if g.kmeans is not None:
        out.append(
            S(
                "kmeans",
                "k-means clusters by layer",
                f"k-means on {how} for every k from 2 up, keeping the k with the best silhouette (1: tight, well-separated clusters; near 0: no cluster structure). The scatters can be coloured by these clusters; tables/kmeans_*.csv hold the labels and every k's silhouette.",
                gp.kmeans_figure(g.kmeans),
            )
        )
    out.append(
        S(
            "dendrogram",
            "Hierarchical clustering",
            f"Average-linkage clustering on the cosine distance of {'centred' if g.normalize.startswith('center') else 'raw'} vectors (on centred ones, the tree that orders the similarity heatmaps); branches below 0.7 of the top merge are coloured by cluster. {slide}",
            gp.dendrogram_figure(g.trees, layers, names, focus, g.normalize),
        )
    )
    return out
