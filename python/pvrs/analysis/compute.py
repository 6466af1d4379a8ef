"""Array-level analyses of persona vectors: similarity, PCA, the assistant axis, layer
curves and neighbours.

Every function is pure and works on `(P, L, H)` float arrays (P personas, L layers, H
hidden size) plus the persona ids and the layer indices they hold, so the same code serves
a local store, a Hub dataset or vectors built in a notebook. Reading and plotting live in
`pvrs.store`/`pvrs.hub.reading` and `pvrs.analysis.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pvrs.errors import InputError, InvalidArgumentError, NonFiniteError

BASELINE_ID = "baseline_assistant"
# A norm below this is treated as zero: cosines with it are 0, not NaN.
_EPS = 1e-12
OPTIMAL_ORDER_MAX = 256


# ---- input checks -------------------------------------------------------------------


def check_samples(
    samples: np.ndarray, persona_ids: Sequence[str], what: str = "vectors"
) -> np.ndarray:
    """Validate a `(P, L, H)` array against its ids; return it as float32.

    Raises `InputError` for a wrong shape or no personas and `NonFiniteError` naming the
    first persona that holds NaN/Inf."""
    arr = np.asarray(samples)
    if arr.ndim != 3:
        raise InvalidArgumentError(
            f"{what}: expected a (personas, layers, hidden) array, got shape {arr.shape}"
        )
    if arr.shape[0] != len(persona_ids):
        raise InvalidArgumentError(
            f"{what}: {arr.shape[0]} vectors but {len(persona_ids)} persona ids"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{what}: no personas to analyse; extract some first (`pvrs extract`)")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).all(axis=(1, 2))
    if not finite.all():
        bad = [pid for pid, ok in zip(persona_ids, finite, strict=True) if not ok]
        raise NonFiniteError(
            f"{what}: persona {bad[0]!r} holds NaN/Inf ({len(bad)} persona(s) affected); "
            f"re-extract it (`pvrs extract --persona-id {bad[0]} --force`); `pvrs validate --deep` lists every affected file"
        )
    return arr


def require_personas(n: int, needed: int, what: str) -> None:
    """Raise `InputError` when an analysis needs more personas than there are."""
    if n < needed:
        raise InputError(
            f"{what} needs at least {needed} personas, found {n}; extract more personas "
            "(or drop --persona-id filters)"
        )


# ---- similarity -----------------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm along the last axis; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """`(P, H)` -> `(P, P)` cosine similarities (float64); a zero row has cosine 0."""
    u = unit_rows(np.asarray(x, dtype=np.float64))
    return np.clip(u @ u.T, -1.0, 1.0)


def center(samples: np.ndarray) -> np.ndarray:
    """Subtract the mean over personas (axis 0), in float64. Analyses call it one layer at
    a time so that peak memory stays near one float32 copy of the input."""
    x = np.asarray(samples, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def hierarchical_order(similarity: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering on `1 - similarity`, so that
    neighbouring rows of a heatmap are alike. Up to `OPTIMAL_ORDER_MAX` personas the
    leaves are also optimally ordered (scipy's cost grows ~n^3 beyond that)."""
    n = similarity.shape[0]
    if n < 3:
        return np.arange(n)
    from scipy.cluster.hierarchy import leaves_list

    return leaves_list(linkage_tree(similarity))


def linkage_tree(similarity: np.ndarray) -> np.ndarray:
    """The scipy linkage matrix `(P - 1, 4)` of the average-linkage clustering on
    `1 - similarity` that `hierarchical_order` orders by (a dendrogram draws it)."""
    from scipy.cluster.hierarchy import linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    dist = np.clip(1.0 - similarity, 0.0, 2.0)
    dist = (dist + dist.T) / 2.0
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    tree = linkage(condensed, method="average")
    if similarity.shape[0] <= OPTIMAL_ORDER_MAX:
        tree = optimal_leaf_ordering(tree, condensed)
    return tree


@dataclass(frozen=True)
class SimilarityResult:
    """Cosine similarity between personas at every layer.

    `raw[i]` and `centered[i]` are `(P, P)` for layer `layers[i]`."""

    persona_ids: list[str]
    layers: list[int]
    raw: np.ndarray
    centered: np.ndarray

    def at(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw, centered, order) at a layer index (a value of `layers`); `order` is the
        hierarchical order of the centered matrix, computed on demand (it costs seconds
        for a thousand personas, so it is not done for every layer)."""
        i = layer_position(self.layers, layer)
        return self.raw[i], self.centered[i], hierarchical_order(self.centered[i])


def similarity_by_layer(
    samples: np.ndarray, persona_ids: Sequence[str], layers: Sequence[int]
) -> SimilarityResult:
    """Raw and centered cosine similarity per layer.

    Centering removes what all personas share (the large common component of residual
    streams), which otherwise makes every raw cosine close to 1."""
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    require_personas(x.shape[0], 2, "similarity")
    # float32 storage: L x P x P of them add up for a thousand personas.
    raw = np.stack([cosine_matrix(x[:, i]).astype(np.float32) for i in range(x.shape[1])])
    cen = np.stack([cosine_matrix(center(x[:, i])).astype(np.float32) for i in range(x.shape[1])])
    return SimilarityResult(list(persona_ids), list(layers), raw, cen)


# ---- agreement between variants / strategies ------------------------------------------


@dataclass(frozen=True)
class AgreementResult:
    """Per persona and layer, the cosine between two versions of its vector (two prompt
    variants, or two mask strategies). `cosine` is `(P, L)`; `centered` tells whether
    each side had its mean over personas removed first."""

    label_a: str
    label_b: str
    persona_ids: list[str]
    layers: list[int]
    cosine: np.ndarray
    centered: bool = False

    @property
    def mean_by_layer(self) -> np.ndarray:
        return self.cosine.mean(axis=0)


def agreement(
    a: np.ndarray,
    ids_a: Sequence[str],
    b: np.ndarray,
    ids_b: Sequence[str],
    layers: Sequence[int],
    labels: tuple[str, str],
    *,
    centered: bool = False,
) -> AgreementResult:
    """Cosine between each persona's vector in `a` and in `b`, on the personas both hold.

    With `centered=True` each side first has its own mean over the shared personas
    subtracted, which measures agreement of what distinguishes personas rather than the
    common component. Raises `InputError` when the two share no persona."""
    xa = check_samples(a, ids_a, labels[0])
    xb = check_samples(b, ids_b, labels[1])
    check_layers(xa, layers)
    check_layers(xb, layers)
    if xa.shape[2] != xb.shape[2]:
        raise InvalidArgumentError(
            f"{labels[0]} and {labels[1]} have hidden sizes {xa.shape[2]} and {xb.shape[2]}"
        )
    pos_b = {pid: i for i, pid in enumerate(ids_b)}
    shared = [pid for pid in ids_a if pid in pos_b]
    if not shared:
        raise InputError(
            f"{labels[0]} and {labels[1]} share no persona; extract the same personas for both"
        )
    pos_a = {pid: i for i, pid in enumerate(ids_a)}
    rows_a, rows_b = [pos_a[p] for p in shared], [pos_b[p] for p in shared]
    cos = np.empty((len(shared), xa.shape[1]))
    for i in range(xa.shape[1]):
        va, vb = xa[rows_a, i].astype(np.float64), xb[rows_b, i].astype(np.float64)
        if centered:
            va, vb = center(va), center(vb)
        cos[:, i] = np.clip((unit_rows(va) * unit_rows(vb)).sum(axis=-1), -1.0, 1.0)
    return AgreementResult(labels[0], labels[1], shared, list(layers), cos, centered)


# ---- PCA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAResult:
    """PCA of the persona vectors at every layer (centered over personas).

    `explained_ratio` is `(L, K)`, `projections` `(L, P, K)`, `components` `(L, K, H)`
    (unit rows, signs fixed so each component's largest |projection| is positive)."""

    persona_ids: list[str]
    layers: list[int]
    explained_ratio: np.ndarray
    projections: np.ndarray
    components: np.ndarray

    @property
    def best_layer(self) -> int:
        """The layer where PC1 explains the largest share of variance."""
        return self.layers[int(np.argmax(self.explained_ratio[:, 0]))]


def pca_by_layer(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    n_components: int = 10,
) -> PCAResult:
    """Exact PCA of the centered `(P, H)` matrix at every layer.

    K is `min(n_components, P - 1, H)`: with P personas there are at most P - 1
    directions of variance. Needs at least two personas."""
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    require_personas(x.shape[0], 2, "PCA")
    if n_components < 1:
        raise InvalidArgumentError(f"n_components must be >= 1, got {n_components}")
    p, n_layers, h = x.shape
    k = min(n_components, p - 1, h)
    ratios = np.zeros((n_layers, k))
    projs = np.zeros((n_layers, p, k))
    comps = np.zeros((n_layers, k, h))
    for i in range(n_layers):
        xc = center(x[:, i])
        u, sv, vt = _top_singular(xc, k)
        # Fix the arbitrary signs (as scikit-learn's svd_flip) so results are stable.
        signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
        signs[signs == 0] = 1.0
        total = float(np.einsum("ph,ph->", xc, xc))
        ratios[i] = sv**2 / total if total > 0 else 0.0
        projs[i] = u * signs * sv
        comps[i] = vt * signs[:, None]
    return PCAResult(list(persona_ids), list(layers), ratios, projs, comps)


def _top_singular(xc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k singular triplets `(U (P,k), s (k,), Vt (k,H))` of a centered `(P, H)` matrix.

    With fewer personas than dimensions (the usual case) this goes through the `P x P`
    Gram matrix: an eigendecomposition of it is several times faster than an SVD of the
    wide matrix, and exact to float64 rounding for the leading components."""
    p, h = xc.shape
    if p > h:
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    evals, evecs = np.linalg.eigh(xc @ xc.T)
    top = np.argsort(evals)[::-1][:k]
    s = np.sqrt(np.clip(evals[top], 0.0, None))
    u = evecs[:, top]
    # Directions of (numerically) zero variance get a zero component, not noise / 0.
    live = s > _EPS * max(float(s[0]) if k else 0.0, 1.0)
    vt = np.zeros((k, h))
    vt[live] = (u[:, live].T @ xc) / s[live, None]
    return u, s, vt


# ---- the assistant axis ----------------------------------------------------------------


@dataclass(frozen=True)
class AxisResult:
    """The assistant axis: mean of the default personas minus mean of the role personas.

    `axis` is `(L, H)` with unit rows; `norm` `(L,)` the length before normalising;
    `projections` `(P, L)` is each persona's `(x - role_mean) . axis`, so the role mean
    sits at 0 and the default personas near `norm`; `cos_pc1` `(L,)` is |cos| between the
    axis and PC1 (None when PCA was not given)."""

    persona_ids: list[str]
    layers: list[int]
    default_ids: list[str]
    role_ids: list[str]
    axis: np.ndarray
    norm: np.ndarray
    projections: np.ndarray
    cos_pc1: np.ndarray | None


def assistant_axis(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    default_ids: Sequence[str] = (BASELINE_ID,),
    pca: PCAResult | None = None,
) -> AxisResult:
    """Compute the assistant axis per layer and every persona's projection on it.

    `default_ids` are the personas that stand for the plain assistant (by default the
    no-system-prompt baseline); every other persona is a role. Raises `InputError` when
    none of the default ids is present or no role persona is left."""
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    wanted = set(default_ids)
    is_default = np.array([pid in wanted for pid in persona_ids])
    if not is_default.any():
        raise InputError(
            f"assistant axis: none of the default personas {sorted(wanted)} is in the data; "
            f"extract {BASELINE_ID!r} (in Python, keep it: load_analysis_dataset(..., include_baseline=True)) "
            "or pass --default-persona (default_ids=) with ids that exist"
        )
    if is_default.all():
        raise InputError("assistant axis: every persona is a default persona; no role persona left")
    role_mean = x[~is_default].mean(axis=0, dtype=np.float64)
    diff = x[is_default].mean(axis=0, dtype=np.float64) - role_mean
    norm = np.linalg.norm(diff, axis=-1)
    axis = unit_rows(diff)
    projections = np.stack(
        [(x[:, i].astype(np.float64) - role_mean[i]) @ axis[i] for i in range(x.shape[1])],
        axis=1,
    )
    cos_pc1 = None
    if pca is not None:
        if list(pca.layers) != list(layers):
            raise InvalidArgumentError("assistant axis: the PCA result covers other layers")
        cos_pc1 = np.abs(np.einsum("lh,lh->l", axis, pca.components[:, 0]))
    return AxisResult(
        list(persona_ids),
        list(layers),
        [p for p, d in zip(persona_ids, is_default, strict=True) if d],
        [p for p, d in zip(persona_ids, is_default, strict=True) if not d],
        axis.astype(np.float32),
        norm,
        projections,
        cos_pc1,
    )


# ---- layer curves ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCurves:
    """Per layer: mean and std of the vector norm over personas, the between-persona
    spread (mean distance to the persona centroid) and that spread relative to the mean
    norm (scale-free, comparable across layers)."""

    layers: list[int]
    norm_mean: np.ndarray
    norm_std: np.ndarray
    spread: np.ndarray
    relative_spread: np.ndarray

    @property
    def best_layer(self) -> int:
        """The layer where personas differ most relative to the vectors' size."""
        return self.layers[int(np.argmax(self.relative_spread))]


def layer_curves(
    samples: np.ndarray, persona_ids: Sequence[str], layers: Sequence[int]
) -> LayerCurves:
    """Norm and between-persona spread by layer, to help pick a layer."""
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    n_layers = x.shape[1]
    norms = np.stack(
        [np.linalg.norm(x[:, i].astype(np.float64), axis=-1) for i in range(n_layers)], axis=1
    )
    spread = np.array([np.linalg.norm(center(x[:, i]), axis=-1).mean() for i in range(n_layers)])
    norm_mean = norms.mean(axis=0)
    return LayerCurves(
        list(layers),
        norm_mean,
        norms.std(axis=0),
        spread,
        spread / np.maximum(norm_mean, _EPS),
    )


# ---- neighbours and distances ----------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    persona_id: str
    cosine: float


def distance_table(x: np.ndarray, *, centered: bool = True) -> np.ndarray:
    """`(P, H)` -> `(P, P)` cosine distances `1 - cos` (centered over personas by default)."""
    v = np.asarray(x, dtype=np.float64)
    if centered:
        v = v - v.mean(axis=0, keepdims=True)
    return 1.0 - cosine_matrix(v)


def nearest_neighbours(
    x: np.ndarray,
    persona_ids: Sequence[str],
    query: str,
    k: int = 5,
    *,
    centered: bool = True,
) -> list[Neighbour]:
    """The `k` personas most cosine-similar to `query` at one layer (`x` is `(P, H)`),
    best first, excluding the query itself."""
    ids = list(persona_ids)
    if query not in ids:
        raise InputError(
            f"unknown persona {query!r}; known: {', '.join(ids[:10])}{'...' if len(ids) > 10 else ''}"
        )
    sims = 1.0 - distance_table(x, centered=centered)
    q = ids.index(query)
    order = [j for j in np.argsort(-sims[q], kind="stable") if j != q][:k]
    return [Neighbour(ids[j], float(sims[q, j])) for j in order]


# ---- helpers ---------------------------------------------------------------------------


def check_layers(x: np.ndarray, layers: Sequence[int]) -> None:
    if len(layers) != x.shape[1]:
        raise InvalidArgumentError(
            f"{x.shape[1]} layers in the array but {len(layers)} layer indices"
        )


def layer_position(layers: Sequence[int], layer: int) -> int:
    """Position of a layer index in `layers`; `InputError` when it was not analysed."""
    try:
        return list(layers).index(layer)
    except ValueError:
        raise InputError(f"layer {layer} is not among the analysed layers {list(layers)}") from None
