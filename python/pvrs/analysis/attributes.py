"""The attribute vectors' report (`pvrs attribute`): for the directions in a trait vector
store, their |cosine| matrix beside the attributes' co-occurrence over the persona set
(Cramér's V), and per layer how well each direction separates its minimal pairs (AUC), its
length (gap norm) and its cosine with the population difference of means. High
co-occurrence with a low trait cosine is a confound the minimal pairs removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.analysis import export
from pvrs.analysis.plots import finish, layer_slider, plotly_go, size, trace_color
from pvrs.errors import InputError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from pvrs.store.traits import TraitVectorStore


def cramers_v(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Cramér's V of two label columns: sqrt(chi2 / (n (min(r, c) - 1))) over their
    contingency table, in [0, 1] (0 independent, 1 one determines the other); NaN when a
    column is constant. The plain estimator (persona-vectors applies a correction)."""
    if len(x) != len(y) or not len(x):
        raise InputError(f"Cramér's V needs two columns of one length, got {len(x)} and {len(y)}")
    rows, r = np.unique(np.asarray([str(v) for v in x]), return_inverse=True)
    cols, c = np.unique(np.asarray([str(v) for v in y]), return_inverse=True)
    if min(len(rows), len(cols)) < 2:
        return float("nan")
    table = np.zeros((len(rows), len(cols)))
    np.add.at(table, (r, c), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


@dataclass(frozen=True)
class AttributeSet:
    """The directions of one trait store folder, as the report reads them."""

    keys: list[str]
    vectors: np.ndarray  # (n_directions, num_layers, hidden_size)
    entries: list[dict[str, Any]]

    @classmethod
    def read(cls, store: TraitVectorStore, variant: str = "templated", keys: Sequence[str] | None = None) -> AttributeSet:
        keys = list(keys) if keys else store.list_attributes(variant)
        if not keys:
            raise InputError(f"no trait vectors in {store.variant_dir(variant)}; run `pvrs attribute` first")
        return cls(keys, np.stack([store.load(k, variant) for k in keys]), [store.metadata(k, variant) for k in keys])

    @property
    def layers(self) -> list[int]:
        return list(range(self.vectors.shape[1]))

    def cosines(self, layer: int) -> np.ndarray:
        """|cosine| between the directions at `layer` (the sign of a direction is a choice of
        which value is `to`)."""
        v = self.vectors[:, layer].astype(np.float64)
        unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return np.abs(unit @ unit.T)

    def cooccurrence(self) -> np.ndarray:
        """Cramér's V between the directions' attributes over the personas both were built
        from (the entries' `persona_values`; NaN where an entry lacks them: a store written by
        persona-vectors). Two directions of one attribute have V 1."""
        columns: list[Mapping[str, str] | None] = [
            e.get("persona_values") if isinstance(e.get("persona_values"), dict) else None for e in self.entries
        ]
        n = len(self.keys)
        out = np.full((n, n), np.nan)
        for i in range(n):
            for j in range(n):
                a, b = columns[i], columns[j]
                shared = sorted(set(a) & set(b)) if a is not None and b is not None else []
                if shared:
                    out[i, j] = cramers_v([a[p] for p in shared], [b[p] for p in shared])  # type: ignore[index]
        return out

    def per_layer(self, name: str) -> np.ndarray:
        """An entry's per-layer map (`auc_by_layer`, ...) as rows, NaN where absent."""
        out = np.full((len(self.keys), len(self.layers)), np.nan)
        for i, e in enumerate(self.entries):
            values = e.get(name)
            if isinstance(values, dict):
                for layer, v in values.items():
                    if str(layer).isdigit() and int(layer) < out.shape[1] and isinstance(v, (int, float)):
                        out[i, int(layer)] = v
        return out


def cosine_vs_cooccurrence_figure(data: AttributeSet, focus: int) -> go.Figure:
    """|trait cosine| (with a layer slider) beside Cramér's V, same rows and columns."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    labels = data.keys
    v = data.cooccurrence()
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.2,
                        subplot_titles=("|trait cosine|", "co-occurrence (Cramér's V)"))  # fmt: skip
    fig.add_trace(go.Heatmap(z=v, x=labels, y=labels, zmin=0, zmax=1, colorscale="Viridis", texttemplate="%{z:.2f}",
                             hovertemplate="%{y} vs %{x}: V %{z:.3f}<extra></extra>"), row=1, col=2)  # fmt: skip

    def draw(fig: go.Figure, layer: int) -> dict[str, Any]:
        fig.add_trace(go.Heatmap(z=data.cosines(layer), x=labels, y=labels, zmin=0, zmax=1, colorscale="Viridis",
                                 showscale=False, texttemplate="%{z:.2f}",
                                 hovertemplate="%{y} vs %{x}: |cos| %{z:.3f}<extra></extra>"), row=1, col=1)  # fmt: skip
        return {"title.text": f"Attribute vectors at layer {layer} vs the attributes' co-occurrence"}

    fig.update_yaxes(autorange="reversed")
    side = size(len(labels), 420)
    fig.update_layout(width=2 * side + 200, height=side + 120)
    return layer_slider(fig, data.layers, focus, draw)


def layer_stats_figure(data: AttributeSet) -> go.Figure:
    """Per layer and direction: minimal-pair AUC, gap norm, cosine with the population
    difference of means."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    panels = (("auc_by_layer", "AUC"), ("gap_norm_by_layer", "gap norm"),
              ("population_cosine_by_layer", "cos with population diff. of means"))  # fmt: skip
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels], horizontal_spacing=0.08)
    for col, (name, _) in enumerate(panels, start=1):
        rows = data.per_layer(name)
        if name == "gap_norm_by_layer":  # the reference stores no gap: it is the vector's norm
            rows = np.linalg.norm(data.vectors.astype(np.float64), axis=2)
        for i, key in enumerate(data.keys):
            fig.add_trace(go.Scatter(x=data.layers, y=rows[i], name=key, legendgroup=key, showlegend=col == 1,
                                     line={"color": trace_color(i)}), row=1, col=col)  # fmt: skip
        fig.update_xaxes(title_text="layer", row=1, col=col)
    return finish(fig, "Minimal pairs by layer", 1200, 460)


def attribute_sections(data: AttributeSet, focus: int | None = None) -> list[export.Section]:
    focus = len(data.layers) // 2 if focus is None else focus
    return [
        export.Section(
            "attribute_cosine_vs_cooccurrence",
            "Attribute vectors vs co-occurrence",
            "Left: |cosine| between the minimal-pair attribute vectors (the slider moves through the layers; "
            f"it starts at layer {focus}). Right: how strongly the attributes co-occur over the personas (Cramér's V). "
            "A pair that co-occurs (high V) but whose vectors are near orthogonal (low cosine) is a confound the "
            "minimal pairs removed; a population difference of means would have mixed them.",
            cosine_vs_cooccurrence_figure(data, focus),
        ),
        export.Section(
            "attribute_layers",
            "Attribute vectors by layer",
            "For each direction: how well projecting both views of every minimal pair on it separates the two values "
            "(AUC, 1 = every pair ordered), its length (gap norm), and its cosine with the population difference of "
            "means of the personas as written (below 1: the population difference carries co-occurring attributes).",
            layer_stats_figure(data),
        ),
    ]


def write_attribute_report(
    store: TraitVectorStore, path: str | Path, variant: str = "templated", focus: int | None = None
) -> Path:
    """The report of a trait store's directions as one offline HTML page."""
    data = AttributeSet.read(store, variant)
    facts = [("model", store.model_name), ("mask strategy", store.mask_strategy), ("variant", variant),
             ("store", str(store.variant_dir(variant))), ("directions", ", ".join(data.keys))]  # fmt: skip
    return export.write_html(attribute_sections(data, focus), Path(path), "pvrs attribute", facts)
