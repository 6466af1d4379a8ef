"""Analysis of persona vectors: array-level computations (`compute`: similarity, PCA, the
assistant axis, layer curves, neighbours), linear probes (`probes`, saved and read by
`probe_artifacts`), plotly figures and their export (`plots`, `export`) and the
`pvrs analyze` report (`report`, `sections`, `tables`).

The computations are re-exported here (`from pvrs.analysis import similarity_by_layer`)."""

from __future__ import annotations

from pvrs.analysis.compute import (
    AgreementResult,
    AxisResult,
    LayerCurves,
    Neighbour,
    PCAResult,
    SimilarityResult,
    agreement,
    assistant_axis,
    cosine_matrix,
    distance_table,
    layer_curves,
    nearest_neighbours,
    pca_by_layer,
    similarity_by_layer,
)

__all__ = [
    "AgreementResult",
    "AxisResult",
    "LayerCurves",
    "Neighbour",
    "PCAResult",
    "SimilarityResult",
    "agreement",
    "assistant_axis",
    "cosine_matrix",
    "distance_table",
    "layer_curves",
    "nearest_neighbours",
    "pca_by_layer",
    "similarity_by_layer",
]
