"""Time the analyses of `pvrs analyze` on random persona vectors of realistic sizes.

Baseline, measured in the same run: scikit-learn's `PCA` fitted per layer (what a user
would write by hand) against `pvrs.analysis.pca_by_layer`. Run by hand:

    maturin develop --release          # once: builds and installs pvrs._core
    python benches/bench_analysis.py            # default sizes
    python benches/bench_analysis.py 1000 42 3584
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
from pvrs.analysis import compute as an
from pvrs.analysis.probes import cross_validate_probe


def _time(fn: Callable[[], object], repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(p: int, n_layers: int, h: int) -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((p, n_layers, h)) + 5.0).astype(np.float32)
    ids = ["baseline_assistant", *(f"p{i}" for i in range(p - 1))]
    layers = list(range(n_layers))
    attrs = {pid: {"kind": "ab"[i % 2]} for i, pid in enumerate(ids)}
    k = min(10, p - 1)
    print(f"\nP={p} personas, L={n_layers} layers, H={h} ({x.nbytes / 2**20:.0f} MiB float32)")

    def sk_pca() -> None:
        for i in range(n_layers):
            PCA(n_components=k, svd_solver="full").fit(x[:, i])

    base = _time(sk_pca)
    rows = [
        ("pca_by_layer (K=10)", _time(lambda: an.pca_by_layer(x, ids, layers, k))),
        ("similarity_by_layer (raw + centered)", _time(lambda: an.similarity_by_layer(x, ids, layers))),
        ("hierarchical order, one layer", _time(lambda: an.hierarchical_order(an.cosine_matrix(x[:, 0])))),
        ("assistant_axis", _time(lambda: an.assistant_axis(x, ids, layers))),
        ("layer_curves", _time(lambda: an.layer_curves(x, ids, layers))),
        ("agreement (raw)", _time(lambda: an.agreement(x, ids, x, ids, layers, ("a", "b")))),
        ("probe diffmeans, 5-fold, all layers", _time(lambda: cross_validate_probe(x, ids, layers, attrs, "kind", "diffmeans"), 1)),
        ("probe logistic, 5-fold, all layers", _time(lambda: cross_validate_probe(x, ids, layers, attrs, "kind", "logistic"), 1)),
    ]  # fmt: skip
    print(f"  {'baseline: sklearn PCA per layer':44s} {base:8.3f} s")
    for name, t in rows:
        extra = f"  ({base / t:.2f}x the sklearn baseline)" if name.startswith("pca") else ""
        print(f"  {name:44s} {t:8.3f} s{extra}")


def main() -> None:
    if len(sys.argv) == 4:
        bench(*(int(a) for a in sys.argv[1:]))
        return
    bench(100, 30, 576)  # the built-in SmolLM2-135M, a hundred personas
    bench(500, 42, 3584)  # a 7-9B model (Gemma-2-9B-sized), five hundred personas


if __name__ == "__main__":
    main()
