"""The geometry figures of the report: Isomap/UMAP scatters and the dendrogram slide through
the layers like the PCA scatter, and the colour-by menu recolours any persona scatter by a
numeric attribute (a colour scale), a categorical one (a palette and a legend) or the
per-layer k-means clusters, without breaking the layer slider."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pvrs.analysis import compute as an
from pvrs.analysis import geometry_plots as gp
from pvrs.analysis import plots
from pvrs.analysis.geometry import dendrogram_by_layer, embedding_by_layer, kmeans_by_layer
from test_plots import FOCUS, LAYERS, _check_slider, _shown, _slider

pytest.importorskip("plotly")

P = 12


@pytest.fixture(scope="module")
def planted():
    """Two clusters of six personas at every layer."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 6)
    x = rng.standard_normal((P, len(LAYERS), 8))
    x[:, :, 0] += np.where(truth == 0, 6.0, -6.0)[:, None]
    ids = [f"p{i:02d}" for i in range(P)]
    return x.astype(np.float32), ids, truth


def test_attribute_colourings_tell_numbers_from_categories():
    ids = ["a", "b", "c", an.BASELINE_ID]
    attrs = {
        "a": {"kind": "x", "age": 30, "formal": True},
        "b": {"kind": "y", "age": 41.5, "formal": False},
        "c": {"kind": "x", "age": 7},
        "elsewhere": {"only_here": "z"},  # no analysed persona has it: no entry
    }
    by_name = {c.name: c for c in gp.attribute_colourings(ids, attrs)}
    assert list(by_name) == ["age", "formal", "kind"]
    assert by_name["age"].numeric and by_name["age"].values == [[30.0, 41.5, 7.0, None]]
    assert not by_name["formal"].numeric and by_name["formal"].categories == ["False", "True"]
    assert not by_name["kind"].numeric and by_name["kind"].values == [["x", "y", "x", None]]
    assert gp.attribute_colourings(ids, None) == []


def test_colour_menu_has_one_entry_per_colouring_and_keeps_the_slider(planted):
    x, ids, _ = planted
    pca = an.pca_by_layer(x, ids, LAYERS)
    kmeans = kmeans_by_layer(x, ids, LAYERS, range(2, 5))
    attrs = {p: {"kind": "ab"[i % 2], "age": float(i)} for i, p in enumerate(ids[:-1])}
    colourings = [gp.cluster_colouring(kmeans), *gp.attribute_colourings(ids, attrs)]
    for dims in (2, 3):
        fig = gp.colour_menu(plots.pca_scatter_figure(pca, ids, FOCUS, dims=dims), colourings)
        _check_slider(fig)  # the menu restyles colours only: every step still shows its layer
        (menu,) = fig.layout.updatemenus
        assert [b.label for b in menu.buttons] == ["k-means cluster", "age", "kind"]
        clusters, age, kind = (b.args for b in menu.buttons)
        # Clusters differ per layer: one colour list per layer trace.
        palette = {c: plots.trace_color(i) for i, c in enumerate(colourings[0].categories)}
        for k, step in enumerate(_slider(fig).steps):
            (trace,) = _shown(fig, step)
            want = [palette[f"cluster {c}"] for c in kmeans.labels[k]]
            assert list(trace.marker.color) == want == clusters[0]["marker.color"][k]
            assert trace.customdata[0] == f"k-means cluster: cluster {kmeans.labels[k][0]}"
        assert "cluster 0" in clusters[1]["annotations"][0]["text"]
        # Numeric: a colour scale with its bar and no legend; missing values stay None.
        assert age[0]["marker.showscale"] is True and age[0]["marker.colorscale"] == "Viridis"
        assert age[0]["marker.color"] == [[float(i) for i in range(P - 1)] + [None]]
        assert age[0]["marker.colorbar.title.text"] == "age" and age[1]["annotations"] == []
        # Categorical: a palette, the persona without the attribute in grey, a legend.
        assert kind[0]["marker.showscale"] is False
        (colours,) = kind[0]["marker.color"]  # the same on every layer: sent once
        a, b = plots.trace_color(0), plots.trace_color(1)
        assert colours == [a, b] * ((P - 1) // 2) + [a, gp._MISSING]
        (legend,) = kind[1]["annotations"]
        assert legend["text"] == (
            f'<b>kind</b><br><span style="color:{a}">●</span> a<br><span style="color:{b}">●</span> b'
        )


def test_one_colouring_draws_no_menu(planted):
    x, ids, _ = planted
    pca = an.pca_by_layer(x, ids, LAYERS)
    axis_ids = [*ids[:-1], an.BASELINE_ID]
    axis = an.assistant_axis(x, axis_ids, LAYERS, pca=pca)
    fig = gp.colour_menu(plots.pca_scatter_figure(pca, ids, FOCUS), [gp.axis_colouring(axis)])
    assert not fig.layout.updatemenus
    for k, step in enumerate(_slider(fig).steps):
        (trace,) = _shown(fig, step)
        np.testing.assert_allclose(trace.marker.color, axis.projections[:, k])
        assert trace.marker.showscale is True


def test_isomap_scatter_slides_with_its_layer(planted):
    x, ids, _ = planted
    coords = embedding_by_layer(x, ids, LAYERS, "isomap", n_neighbors=5)
    fig = gp.embedding_figure(coords, LAYERS, ids, FOCUS, "isomap")
    _check_slider(fig)
    for k, step in enumerate(_slider(fig).steps):
        (trace,) = _shown(fig, step)
        np.testing.assert_allclose(trace.x, coords[k][:, 0])
        assert step.args[1]["title.text"] == f"Personas by Isomap, layer {LAYERS[k]}"
        assert step.args[1]["xaxis.title.text"] == "Isomap 1"


def test_dendrogram_slides_and_names_its_leaves_per_layer(planted):
    from scipy.cluster.hierarchy import leaves_list

    x, ids, truth = planted
    trees = dendrogram_by_layer(x, ids, LAYERS)
    fig = gp.dendrogram_figure(trees, LAYERS, ids, FOCUS, "center")
    _check_slider(fig)
    for k, step in enumerate(_slider(fig).steps):
        leaves = [ids[j] for j in leaves_list(trees[k])]
        assert step.args[1]["yaxis.ticktext"] == leaves
        # The two planted clusters are two runs of leaves.
        runs = [truth[ids.index(p)] for p in leaves]
        assert sum(a != b for a, b in itertools.pairwise(runs)) == 1
        *links, points = _shown(fig, step)
        assert list(points.text) == leaves and len(links) >= 2  # coloured clusters + the top
    assert "centred" in fig.layout.xaxis.title.text
