"""The machine-readable side of the `pvrs analyze` report: one CSV per table and the
`summary.json` of headline numbers."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvrs.analysis import compute as an
from pvrs.analysis.findings import Findings
from pvrs.analysis.geometry import GeometryViews

# Past this many values (personas^2 x layers, e.g. 700 personas x 40 layers) the all-layer
# similarity file is skipped: the focus layer's CSVs remain. The HTML report's layer slider
# on the heatmaps has its own, lower cap on the same count (`plots.SIMILARITY_SLIDER_MAX`).
ALL_LAYER_SIMILARITY_MAX = 20_000_000


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


def similarity_tables(sim: an.SimilarityResult, focus: int, d: Path) -> list[Path]:
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


def neighbour_tables(x: np.ndarray, ids: list[str], k: int, d: Path) -> list[Path]:
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


def pca_tables(pca: an.PCAResult, names: list[str], focus: int, d: Path) -> list[Path]:
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


def geometry_tables(
    g: GeometryViews, ids: list[str], names: list[str], layers: list[int], focus: int, d: Path
) -> list[Path]:
    """k-means per layer (chosen k, its silhouette, every k's) and per persona (its cluster
    at every layer, numbered from 0), and the Isomap/UMAP coordinates at the focus layer."""
    out = []
    km = g.kmeans
    if km is not None:
        ks = sorted(km.silhouettes[0])
        out.append(
            _write_csv(
                d / "kmeans_layers.csv",
                ["layer", "k", "silhouette", *[f"silhouette_k{k}" for k in ks]],
                [
                    [layer, k, s[int(k)], *(s[c] for c in ks)]
                    for layer, k, s in zip(layers, km.k, km.silhouettes, strict=True)
                ],
            )
        )
        out.append(
            _write_csv(
                d / "kmeans_clusters.csv",
                ["persona_id", "name", *[f"layer_{layer}" for layer in layers]],
                [[pid, n, *row] for pid, n, row in zip(ids, names, km.labels.T, strict=True)],
            )
        )
    if g.embeddings:
        fi = an.layer_position(layers, focus)
        columns = [f"{m}{j + 1}" for m in g.embeddings for j in range(2)]
        coords = np.concatenate([e[fi] for e in g.embeddings.values()], axis=1)
        out.append(
            _write_csv(
                d / "embeddings.csv",
                ["persona_id", "name", *columns],
                [[pid, n, *row] for pid, n, row in zip(ids, names, coords, strict=True)],
            )
        )
    return out


def layer_table(
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


def agreement_table(results: list[an.AgreementResult], path: Path) -> Path:
    layers = results[0].layers
    rows = [
        [r.label_a, r.label_b, r.centered, pid, *cos]
        for r in results
        for pid, cos in [("(mean)", r.mean_by_layer), *zip(r.persona_ids, r.cosine, strict=True)]
    ]
    header = ["a", "b", "centered", "persona_id", *[f"layer_{layer}" for layer in layers]]
    return _write_csv(path, header, rows)


def axis_tables(axis: an.AxisResult, names: list[str], out: Path) -> list[Path]:
    from safetensors.numpy import save

    from pvrs.store import atomic_write_bytes

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
    # Bytes through atomic_write_bytes: safetensors' save_file ignores the umask (mode 0o600).
    atomic_write_bytes(
        vec,
        save(
            {"axis": np.ascontiguousarray(axis.axis), "norm": axis.norm.astype(np.float32)},
            metadata={"layers": json.dumps(axis.layers), "default_ids": json.dumps(axis.default_ids)},
        ),
    )
    return [proj, vec]


def probe_table(curves: list[Any], path: Path) -> Path:
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


def summary_of(f: Findings, probe_dirs: list[Path], notes: list[str]) -> dict[str, Any]:
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
    if f.geometry is not None:
        km = f.geometry.kmeans
        summary["geometry"] = {
            "normalize": f.geometry.normalize,
            "embeddings": list(f.geometry.embeddings),
            "kmeans_k_at_focus": None if km is None else int(km.k[fi]),
            "kmeans_silhouette_at_focus": None if km is None else float(km.silhouette[fi]),
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


def layer_span(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return ", ".join(map(str, layers))


def slug(text: str) -> str:
    # No leading or trailing dot: `..` must not name a parent folder in an output path.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "attribute"
