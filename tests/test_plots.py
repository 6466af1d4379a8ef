"""The report's per-layer figures: a layer slider with one step per analysed layer that
starts at the focus layer and shows that layer's data, PNGs of the focus layer alone,
and readable figures (no name smear, bounded size) with many personas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pvrs.analysis import compute as an
from pvrs.analysis import export, plots

pytest.importorskip("plotly")

LAYERS = [3, 5, 7, 9]
FOCUS = 7


def _results(n_personas: int, layers: list[int] = LAYERS, hidden: int = 8):
    rng = np.random.default_rng(0)
    ids = [f"p{i:03d}" for i in range(n_personas - 1)] + [an.BASELINE_ID]
    x = rng.standard_normal((n_personas, len(layers), hidden)).astype(np.float32)
    x[-1, :, 0] += 4.0
    sim = an.similarity_by_layer(x, ids, layers)
    pca = an.pca_by_layer(x, ids, layers)
    axis = an.assistant_axis(x, ids, layers, pca=pca)
    return [i.upper() for i in ids], sim, pca, axis


@pytest.fixture(scope="module")
def small():
    return _results(6)


def _slider(fig):
    (slider,) = fig.layout.sliders
    return slider


def _shown(fig, step) -> list:
    """The traces a slider step makes visible."""
    return [t for t, v in zip(fig.data, step.args[0]["visible"], strict=True) if v]


def _check_slider(fig) -> None:
    slider = _slider(fig)
    assert [s.label for s in slider.steps] == [str(layer) for layer in LAYERS]
    assert LAYERS[slider.active] == FOCUS
    # The figure as first drawn is the focus layer's step.
    active = slider.steps[slider.active].args[0]["visible"]
    assert [t.visible for t in fig.data] == active


def test_similarity_slides_through_every_layer(small):
    names, sim, _, _ = small
    fig = plots.similarity_figure(sim, names, FOCUS)
    _check_slider(fig)
    order = sim.at(FOCUS)[2]  # the focus layer's rows, kept on every step
    for k, step in enumerate(_slider(fig).steps):
        raw, centered = _shown(fig, step)
        np.testing.assert_allclose(raw.z, sim.raw[k][np.ix_(order, order)])
        np.testing.assert_allclose(centered.z, sim.centered[k][np.ix_(order, order)])
        assert step.args[1]["title.text"].endswith(f"layer {LAYERS[k]}")
    assert fig.layout.title.text.endswith(f"layer {FOCUS}")
    assert list(fig.data[0].y) == [names[i] for i in order]


def test_pca_scatter_slides_with_its_axis_titles_and_colours(small):
    names, _, pca, axis = small
    for dims in (2, 3):
        fig = plots.pca_scatter_figure(pca, names, FOCUS, dims=dims, color=axis.projections)
        _check_slider(fig)
        for k, step in enumerate(_slider(fig).steps):
            (trace,) = _shown(fig, step)
            np.testing.assert_allclose(trace.x, pca.projections[k][:, 0])
            np.testing.assert_allclose(trace.y, pca.projections[k][:, 1])
            np.testing.assert_allclose(trace.marker.color, axis.projections[:, k])
            x_title = "xaxis.title.text" if dims == 2 else "scene.xaxis.title.text"
            assert step.args[1][x_title] == f"PC1 ({pca.explained_ratio[k, 0]:.0%})"
        assert fig.data[0].mode == "markers+text"  # few personas: names drawn


def test_axis_bars_slide_and_resort_per_layer(small):
    names, _, _, axis = small
    fig = plots.axis_projection_figure(axis, names, FOCUS)
    _check_slider(fig)
    for k, step in enumerate(_slider(fig).steps):
        (bars,) = _shown(fig, step)
        order = np.argsort(axis.projections[:, k])
        np.testing.assert_allclose(bars.x, axis.projections[order, k])
        assert step.args[1]["yaxis.categoryarray"] == [names[j] for j in order]


def test_scree_slides_and_keeps_the_pc1_curve(small):
    _, _, pca, _ = small
    fig = plots.scree_figure(pca, FOCUS)
    _check_slider(fig)
    for k, step in enumerate(_slider(fig).steps):
        pc1, bars, cumulative = _shown(fig, step)
        np.testing.assert_allclose(pc1.y, pca.explained_ratio[:, 0])  # every layer's, always
        np.testing.assert_allclose(bars.y, pca.explained_ratio[k])
        np.testing.assert_allclose(cumulative.y, np.cumsum(pca.explained_ratio[k]))


def test_one_layer_draws_no_slider():
    names, sim, pca, axis = _results(5, [4])
    for fig in (
        plots.similarity_figure(sim, names, 4),
        plots.pca_scatter_figure(pca, names, 4),
        plots.axis_projection_figure(axis, names, 4),
    ):
        assert not fig.layout.sliders and all(t.visible for t in fig.data)


def test_png_is_the_focus_layer_without_the_slider(small, tmp_path, monkeypatch):
    names, sim, pca, _ = small
    sections = [
        export.Section("similarity", "", "", plots.similarity_figure(sim, names, FOCUS)),
        export.Section("pca_2d", "", "", plots.pca_scatter_figure(pca, names, FOCUS)),
    ]
    written: dict = {}
    monkeypatch.setattr(export, "png_browser", lambda: "chromium")
    monkeypatch.setattr(
        "plotly.io.write_images", lambda figs, paths, **kw: written.update(kw, figs=figs)
    )
    export.write_pngs(sections, tmp_path)
    sim_png, pca_png = written["figs"]
    assert not sim_png.layout.sliders and not pca_png.layout.sliders
    k = LAYERS.index(FOCUS)
    order = sim.at(FOCUS)[2]
    shown = [t for t in sim_png.data if t.visible]
    np.testing.assert_allclose(shown[0].z, sim.raw[k][np.ix_(order, order)])
    (points,) = [t for t in pca_png.data if t.visible]
    np.testing.assert_allclose(points.x, pca.projections[k][:, 0])
    # Each figure at its own size, not the exporter's default.
    assert written["width"] == [s.figure.layout.width for s in sections]
    assert written["height"] == [s.figure.layout.height for s in sections]


def test_many_personas_draw_no_name_smear():
    n = 150
    names, sim, pca, axis = _results(n, LAYERS, hidden=16)
    heat = plots.similarity_figure(sim, names, FOCUS)
    axes = [heat.layout[a] for a in ("xaxis", "xaxis2", "yaxis", "yaxis2")]
    assert all(a.showticklabels is False for a in axes)
    assert all(len(t.x) == n for t in heat.data)  # names stay on hover
    bars = plots.axis_projection_figure(axis, names, FOCUS)
    assert bars.layout.yaxis.showticklabels is False
    for dims in (2, 3):
        scatter = plots.pca_scatter_figure(pca, names, FOCUS, dims=dims)
        assert all(t.mode == "markers" for t in scatter.data)
        assert all("%{text}" in t.hovertemplate for t in scatter.data)
    # No per-name room to keep: the size stops growing with personas.
    for fig in (heat, bars):
        assert fig.layout.height <= plots._UNLABELLED_SIZE + 200
    assert heat.layout.width <= 2 * plots._UNLABELLED_SIZE + 200


def test_few_personas_keep_their_names(small):
    names, sim, _, axis = small
    heat = plots.similarity_figure(sim, names, FOCUS)
    assert heat.layout.xaxis.showticklabels is True and heat.layout.yaxis.showticklabels is True
    assert plots.axis_projection_figure(axis, names, FOCUS).layout.yaxis.showticklabels is True


def test_similarity_past_the_cap_shows_the_focus_layer_only(small, monkeypatch):
    names, sim, _, _ = small
    monkeypatch.setattr(plots, "SIMILARITY_SLIDER_MAX", sim.raw.size - 1)
    assert not plots.similarity_slides(sim)
    fig = plots.similarity_figure(sim, names, FOCUS)
    assert not fig.layout.sliders
    raw, centered = fig.data
    k = LAYERS.index(FOCUS)
    order = sim.at(FOCUS)[2]
    np.testing.assert_allclose(raw.z, sim.raw[k][np.ix_(order, order)])
    np.testing.assert_allclose(centered.z, sim.centered[k][np.ix_(order, order)])
    assert "focus layer only" in fig.layout.title.subtitle.text


def test_report_caption_says_when_similarity_does_not_slide(tmp_path, monkeypatch):
    from pvrs.analysis.report import ReportOptions, VectorSet, run_analysis

    rng = np.random.default_rng(2)
    ids = [f"p{i}" for i in range(5)]
    vs = VectorSet("answer_mean", "templated", ids, ids, LAYERS, rng.standard_normal((5, 4, 8)))
    monkeypatch.setattr(plots, "SIMILARITY_SLIDER_MAX", 10)
    res = run_analysis([vs], tmp_path / "o", ReportOptions(png=False))
    page = Path(res.html).read_text()
    assert "Focus layer only: 5 personas over 4 layers" in page
    assert '"sliders"' in page  # the PCA figures still slide
