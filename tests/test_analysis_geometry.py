"""pvrs.analysis.geometry: planted clusters found by k-means (its k chosen by silhouette),
kept apart by Isomap, and joined first in the dendrogram; normalisation options."""

from __future__ import annotations

import numpy as np
import pytest
from pvrs.analysis.compute import center, cosine_matrix, hierarchical_order
from pvrs.analysis.geometry import (
    dendrogram_by_layer,
    embedding_by_layer,
    kmeans_by_layer,
    normalised,
)
from pvrs.errors import InputError, InvalidArgumentError

P, H = 24, 32


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Layer 1 holds three tight clusters of 8 personas; layer 0 is noise."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 8)
    centres = rng.standard_normal((3, H)) * 6
    x = rng.standard_normal((P, 2, H))
    x[:, 1] = centres[truth] + 0.3 * rng.standard_normal((P, H))
    return x.astype(np.float32), [f"p{i:02d}" for i in range(P)], truth


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all(len(np.unique(b[a == c])) == 1 for c in np.unique(a)) and len(np.unique(a)) == len(np.unique(b))


def test_kmeans_finds_the_planted_clusters_and_their_number(planted):
    x, ids, truth = planted
    result = kmeans_by_layer(x, ids, [0, 1], range(2, 7))
    assert result.k[1] == 3 and _same_partition(result.labels[1], truth)
    assert result.silhouette[1] > 0.8 > result.silhouette[0]
    assert set(result.silhouettes[1]) == {2, 3, 4, 5, 6}
    unit = kmeans_by_layer(x, ids, [0, 1], range(2, 7), centre=True, unit_norm=True)
    assert unit.k[1] == 3 and _same_partition(unit.labels[1], truth)
    with pytest.raises(InvalidArgumentError, match=r"no k in 2\.\.23"):
        kmeans_by_layer(x, ids, [0, 1], [1, 40])


def test_isomap_keeps_clusters_apart_and_umap_needs_its_package(planted):
    x, ids, truth = planted
    coords = embedding_by_layer(x, ids, [0, 1], "isomap", n_neighbors=10)
    assert coords.shape == (2, P, 2)
    layer1 = coords[1]
    within = max(np.ptp(layer1[truth == c], axis=0).max() for c in range(3))
    between = min(
        np.linalg.norm(layer1[truth == a].mean(0) - layer1[truth == b].mean(0))
        for a, b in ((0, 1), (0, 2), (1, 2))
    )
    assert between > within
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install umap-learn"):
            embedding_by_layer(x, ids, [0, 1], "umap")
    with pytest.raises(InvalidArgumentError, match="tsne"):
        embedding_by_layer(x, ids, [0, 1], "tsne")


def test_dendrogram_is_the_tree_the_report_orders_by(planted):
    from scipy.cluster.hierarchy import fcluster, leaves_list

    x, ids, truth = planted
    trees = dendrogram_by_layer(x, ids, [0, 1])
    assert trees.shape == (2, P - 1, 4)
    assert _same_partition(fcluster(trees[1], 3, criterion="maxclust"), truth)
    centered = cosine_matrix(center(x[:, 1]))
    np.testing.assert_array_equal(leaves_list(trees[1]), hierarchical_order(centered))


def test_normalisation():
    x = np.array([[3.0, 4.0], [1.0, 0.0]])
    np.testing.assert_allclose(np.linalg.norm(normalised(x, unit_norm=True), axis=1), 1.0)
    np.testing.assert_allclose(normalised(x, centre=True).mean(0), 0.0)
    np.testing.assert_array_equal(normalised(x), x)
