"""Geometry views of persona vectors beyond PCA, per layer: k-means with a silhouette-chosen
k, Isomap and UMAP projections, and the hierarchical clustering (the tree `pvrs analyze`
orders its heatmaps by) as a dendrogram's linkage matrix. Each can first normalise the
vectors as the reference tool offers: centre them (subtract the mean persona) and/or scale
each to unit norm. Arrays are `(P, L, H)` with persona ids and layer indices, as in
`pvrs.analysis.compute`; `geometry_views` runs them all for the `pvrs analyze` report."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pvrs.analysis.compute import (
    center,
    check_layers,
    check_samples,
    cosine_matrix,
    linkage_tree,
    require_personas,
    unit_rows,
)
from pvrs.errors import InputError, InvalidArgumentError

EMBEDDINGS = ("isomap", "umap")
# `--geometry-normalize` choices: (centre, unit norm).
NORMALISATIONS = {
    "none": (False, False),
    "center": (True, False),
    "unit": (False, True),
    "center-unit": (True, True),
}
UMAP_INSTALL = "pip install umap-learn, or pip install 'pvrs[umap]'"


def normalised(x: np.ndarray, *, centre: bool = False, unit_norm: bool = False) -> np.ndarray:
    """One layer's `(P, H)` vectors, centred over personas and/or scaled to unit norm
    (centring first, so unit norm applies to the centred vectors)."""
    out = center(x) if centre else np.asarray(x, dtype=np.float64)
    return unit_rows(out) if unit_norm else out


@dataclass(frozen=True)
class KMeansResult:
    """Per layer (row `i` is `layers[i]`): the k with the best silhouette, the persona
    cluster labels for it, and the silhouette of every k tried."""

    persona_ids: list[str]
    layers: list[int]
    k: np.ndarray  # (L,)
    labels: np.ndarray  # (L, P)
    silhouettes: list[dict[int, float]]

    @property
    def silhouette(self) -> np.ndarray:
        return np.array([s[int(k)] for s, k in zip(self.silhouettes, self.k, strict=True)])


def kmeans_by_layer(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    k_values: Sequence[int] = range(2, 11),
    *,
    centre: bool = False,
    unit_norm: bool = False,
    seed: int = 0,
) -> KMeansResult:
    """k-means at every layer for each k in `k_values` below the persona count, keeping
    the k with the highest silhouette (euclidean, on the normalised vectors)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    require_personas(x.shape[0], 3, "k-means with a silhouette-chosen k")
    ks = sorted({int(k) for k in k_values if 2 <= int(k) < x.shape[0]})
    if not ks:
        raise InvalidArgumentError(
            f"k_values {list(k_values)} has no k in 2..{x.shape[0] - 1} for {x.shape[0]} personas"
        )
    best_k, all_labels, tried = [], [], []
    for i in range(x.shape[1]):
        xi = normalised(x[:, i], centre=centre, unit_norm=unit_norm)
        scores: dict[int, float] = {}
        labels: dict[int, np.ndarray] = {}
        for k in ks:
            labels[k] = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(xi)
            distinct = len(np.unique(labels[k]))
            scores[k] = float(silhouette_score(xi, labels[k])) if 1 < distinct < len(xi) else -1.0
        k = max(ks, key=lambda c: scores[c])
        best_k.append(k)
        all_labels.append(labels[k])
        tried.append(scores)
    return KMeansResult(list(persona_ids), list(layers), np.array(best_k), np.array(all_labels), tried)


def embedding_by_layer(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    method: str = "isomap",
    *,
    n_components: int = 2,
    n_neighbors: int = 10,
    centre: bool = False,
    unit_norm: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """`(L, P, n_components)` Isomap or UMAP coordinates of the personas at every layer
    (`n_neighbors` capped below the persona count). UMAP needs `umap-learn`."""
    if method not in EMBEDDINGS:
        raise InvalidArgumentError(f"method={method!r} is not one of {', '.join(EMBEDDINGS)}")
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    require_personas(x.shape[0], n_components + 2, f"a {n_components}-D {method} projection")
    neighbours = max(2, min(n_neighbors, x.shape[0] - 1))
    with warnings.catch_warnings():
        # Well-separated clusters leave Isomap's neighbour graph in pieces, which it joins
        # itself (cheaply at persona counts); its warnings about that are noise here.
        warnings.filterwarnings("ignore", "The number of connected components", UserWarning)
        warnings.filterwarnings("ignore", "Changing the sparsity structure")
        return np.stack(
            [
                _embedder(method, n_components, neighbours, seed).fit_transform(
                    normalised(x[:, i], centre=centre, unit_norm=unit_norm)
                )
                for i in range(x.shape[1])
            ]
        )


def _embedder(method: str, n_components: int, neighbours: int, seed: int) -> Any:
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise InputError(f"UMAP needs the umap-learn package: {UMAP_INSTALL}") from None
        # Seeded UMAP runs on one thread; saying so spares its warning.
        return umap.UMAP(
            n_components=n_components, n_neighbors=neighbours, random_state=seed, n_jobs=1
        )
    from sklearn.manifold import Isomap

    return Isomap(n_components=n_components, n_neighbors=neighbours)


def dendrogram_by_layer(
    samples: np.ndarray, persona_ids: Sequence[str], layers: Sequence[int], *, centre: bool = True
) -> np.ndarray:
    """`(L, P - 1, 4)` scipy linkage matrices of the average-linkage clustering on cosine
    distance (centred vectors by default, as the report's ordering), one per layer, for
    `scipy.cluster.hierarchy.dendrogram`."""
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    require_personas(x.shape[0], 2, "a dendrogram")
    return np.stack(
        [linkage_tree(cosine_matrix(normalised(x[:, i], centre=centre))) for i in range(x.shape[1])]
    )


@dataclass(frozen=True)
class GeometryViews:
    """What the report draws beyond PCA, all on vectors normalised as `normalize` says
    (the dendrogram uses cosine distance, so only its centring matters)."""

    normalize: str
    kmeans: KMeansResult | None
    embeddings: dict[str, np.ndarray]  # method -> (L, P, 2)
    trees: np.ndarray  # (L, P - 1, 4)


def geometry_views(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    normalize: str = "center",
    notes: list[str] | None = None,
) -> GeometryViews:
    """k-means, Isomap, UMAP (when umap-learn is installed) and the dendrogram's trees.
    A view that cannot be drawn (too few personas, no umap-learn) is left out with a line
    in `notes`."""
    if normalize not in NORMALISATIONS:
        raise InvalidArgumentError(
            f"normalize={normalize!r} is not one of {', '.join(NORMALISATIONS)}"
        )
    centre, unit_norm = NORMALISATIONS[normalize]
    said = notes if notes is not None else []
    kmeans = None
    try:
        kmeans = kmeans_by_layer(samples, persona_ids, layers, centre=centre, unit_norm=unit_norm)
    except InputError as exc:
        said.append(f"k-means skipped: {exc}")
    embeddings: dict[str, np.ndarray] = {}
    for method in EMBEDDINGS:
        try:
            embeddings[method] = embedding_by_layer(
                samples, persona_ids, layers, method, centre=centre, unit_norm=unit_norm
            )
        except InputError as exc:
            said.append(f"{method} skipped: {exc}")  # too few personas, or no umap-learn
    trees = dendrogram_by_layer(samples, persona_ids, layers, centre=centre)
    return GeometryViews(normalize, kmeans, embeddings, trees)
