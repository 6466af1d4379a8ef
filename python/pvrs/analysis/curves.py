"""Across-layer figures: the assistant axis by layer, layer curves, agreement between
variants and probe scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pvrs.analysis.compute import (
    AgreementResult,
    AxisResult,
    LayerCurves,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from pvrs.analysis.probes import ProbeCurve
from pvrs.analysis.plots import finish, plotly_go, trace_color


def axis_layers_figure(axis: AxisResult) -> go.Figure:
    """The axis's length and its alignment with PC1 by layer."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("axis norm (default - role mean)", "|cos(axis, PC1)|")
    )
    fig.add_trace(
        go.Scatter(x=axis.layers, y=axis.norm, mode="lines+markers", name="norm"), row=1, col=1
    )
    if axis.cos_pc1 is not None:
        fig.add_trace(
            go.Scatter(x=axis.layers, y=axis.cos_pc1, mode="lines+markers", name="|cos|"),
            row=1,
            col=2,
        )
        fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(showlegend=False)
    return finish(fig, "The assistant axis by layer", 1100, 450)


def layer_curves_figure(curves: LayerCurves) -> go.Figure:
    """Vector norm (mean ± std over personas) and between-persona spread by layer."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("vector norm", "between-persona spread / mean norm")
    )
    fig.add_trace(
        go.Scatter(
            x=curves.layers,
            y=curves.norm_mean,
            error_y={"type": "data", "array": curves.norm_std},
            mode="lines+markers",
            name="norm",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=curves.layers, y=curves.spread, mode="lines", name="spread", line={"dash": "dot"}
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=curves.layers, y=curves.relative_spread, mode="lines+markers", name="relative spread"
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="layer")
    return finish(fig, "Layer curves", 1100, 500)


def agreement_figure(results: Sequence[AgreementResult], title: str) -> go.Figure:
    """Cosine between two versions of each persona's vector by layer, raw (left) and
    centered (right): line, the mean over personas; band, min to max. One colour per pair."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("raw cosine", "centered cosine"))
    pairs = list(dict.fromkeys((r.label_a, r.label_b) for r in results))
    for res in results:
        pair = (res.label_a, res.label_b)
        color = trace_color(pairs.index(pair))
        col = 2 if res.centered else 1
        lo, hi = res.cosine.min(axis=0), res.cosine.max(axis=0)
        fig.add_trace(
            go.Scatter(
                x=[*res.layers, *res.layers[::-1]],
                y=[*hi, *lo[::-1]],
                mode="lines",
                fill="toself",
                fillcolor=color,
                opacity=0.2,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=res.layers,
                y=res.mean_by_layer,
                mode="lines+markers",
                line={"color": color},
                name=f"{pair[0]} vs {pair[1]}",
                legendgroup=str(pair),
                showlegend=not res.centered,
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="layer")
    return finish(fig, title, 1100, 480)


def probe_figure(curves: Sequence[ProbeCurve]) -> go.Figure:
    """Cross-validated probe score by layer, one line per attribute and method; dotted:
    chance level of balanced accuracy (1 / classes) of each categorical attribute."""
    go = plotly_go()
    fig = go.Figure()
    chance_drawn: set[str] = set()
    for i, c in enumerate(curves):
        fig.add_trace(
            go.Scatter(
                x=c.layers,
                y=c.scores,
                mode="lines+markers",
                line={"color": trace_color(i)},
                name=f"{c.attribute} / {c.method} ({c.primary})",
            )
        )
        if c.task == "classification" and c.attribute not in chance_drawn:
            chance_drawn.add(c.attribute)
            fig.add_trace(
                go.Scatter(
                    x=c.layers,
                    y=[m["chance"] for m in c.metrics],
                    mode="lines",
                    line={"dash": "dot", "color": "grey"},
                    name=f"{c.attribute}: chance",
                )
            )
    fig.update_layout(xaxis_title="layer", yaxis_title="score")
    return finish(fig, "Linear probes: cross-validated score by layer", 1000, 500)
