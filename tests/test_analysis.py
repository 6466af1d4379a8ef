"""pvrs.analysis.compute on small synthetic arrays whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
from pvrs.analysis.compute import (
    agreement,
    assistant_axis,
    cosine_matrix,
    distance_table,
    hierarchical_order,
    layer_curves,
    nearest_neighbours,
    pca_by_layer,
    similarity_by_layer,
)
from pvrs.errors import InputError, InvalidArgumentError, NonFiniteError


def _basis(h: int, i: int) -> np.ndarray:
    e = np.zeros(h, dtype=np.float32)
    e[i] = 1.0
    return e


def test_cosine_matrix_by_hand():
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    c = cosine_matrix(x)
    np.testing.assert_allclose(c[0, 1], 1 / np.sqrt(2))
    np.testing.assert_allclose(np.diag(c)[:2], 1.0)
    assert c[2, 2] == 0.0 and c[0, 2] == 0.0  # a zero vector has cosine 0, not NaN


def test_centered_cosine_of_symmetric_personas():
    # Four personas c +- d1, c +- d2 with a large shared component c: raw cosines are all
    # near 1, centered ones are exactly [[1,-1,0,0],[-1,1,0,0],[0,0,1,-1],[0,0,-1,1]].
    h = 8
    c = 100.0 * _basis(h, 0)
    d1, d2 = _basis(h, 1), _basis(h, 2)
    layer = np.stack([c + d1, c - d1, c + d2, c - d2])
    samples = np.stack([layer, 2 * layer], axis=1)  # two layers
    ids = ["a", "b", "c", "d"]
    res = similarity_by_layer(samples, ids, [3, 7])
    assert res.raw.shape == res.centered.shape == (2, 4, 4)
    assert (res.raw > 0.99).all()
    expected = np.array([[1, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 1, -1], [0, 0, -1, 1]], dtype=float)
    _raw7, cen7, order7 = res.at(7)
    np.testing.assert_allclose(cen7, expected, atol=1e-6)
    np.testing.assert_allclose(res.centered[0], expected, atol=1e-6)
    assert sorted(order7.tolist()) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="layer 5"):
        res.at(5)


def test_hierarchical_order_groups_similar_rows():
    # Two tight clusters {0, 2, 4} and {1, 3, 5}: the order must keep each contiguous.
    rng = np.random.default_rng(0)
    a, b = _basis(16, 0), _basis(16, 1)
    x = np.stack([(a if i % 2 == 0 else b) + 0.01 * rng.standard_normal(16) for i in range(6)])
    order = hierarchical_order(cosine_matrix(x)).tolist()
    groups = [i % 2 for i in order]
    assert groups in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])


def test_pca_recovers_planted_direction():
    rng = np.random.default_rng(1)
    p, h = 12, 32
    d = rng.standard_normal(h)
    d /= np.linalg.norm(d)
    coeff = np.linspace(-3, 3, p)
    offset = 50 * rng.standard_normal(h)
    strong = offset + coeff[:, None] * d + 0.01 * rng.standard_normal((p, h))
    weak = offset + 0.3 * coeff[:, None] * d + 0.3 * rng.standard_normal((p, h))
    samples = np.stack([weak, strong], axis=1).astype(np.float32)
    res = pca_by_layer(samples, [f"p{i}" for i in range(p)], [0, 1], n_components=3)
    assert res.explained_ratio.shape == (2, 3)
    assert res.projections.shape == (2, p, 3)
    assert abs(res.components[1, 0] @ d) > 0.999
    assert res.explained_ratio[1, 0] > 0.99
    assert res.best_layer == 1
    # PC1 projections are the planted coefficients, centered (up to the fixed sign).
    proj = res.projections[1, :, 0]
    np.testing.assert_allclose(np.abs(proj), np.abs(coeff - coeff.mean()), atol=0.05)
    # Ratios of all components never exceed 1 and K is capped at P - 1.
    assert (res.explained_ratio.sum(axis=1) <= 1 + 1e-9).all()
    two = pca_by_layer(samples[:2], ["a", "b"], [0, 1])
    assert two.explained_ratio.shape == (2, 1)
    np.testing.assert_allclose(two.explained_ratio[:, 0], 1.0)


@pytest.mark.parametrize("shape", [(12, 40), (30, 8)])  # fewer and more personas than dims
def test_pca_matches_scikit_learn(shape):
    from sklearn.decomposition import PCA

    p, h = shape
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((p, 1, h)) * np.linspace(3, 0.1, h) + 7).astype(np.float32)
    res = pca_by_layer(x, [f"p{i}" for i in range(p)], [0], n_components=5)
    ref = PCA(n_components=5, svd_solver="full").fit(x[:, 0].astype(np.float64))
    np.testing.assert_allclose(res.explained_ratio[0], ref.explained_variance_ratio_, rtol=1e-6)
    # Same directions up to sign; projections are the data in those coordinates.
    np.testing.assert_allclose(np.abs(res.components[0]), np.abs(ref.components_), atol=1e-6)
    np.testing.assert_allclose(
        np.abs(res.projections[0]), np.abs(ref.transform(x[:, 0].astype(np.float64))), atol=1e-5
    )


def test_pca_needs_two_personas():
    with pytest.raises(InputError, match="at least 2 personas"):
        pca_by_layer(np.ones((1, 2, 4), np.float32), ["only"], [0, 1])


def test_assistant_axis_recovers_planted_offset():
    h = 10
    c = 20.0 * _basis(h, 0)
    u = _basis(h, 1)
    roles = [c + _basis(h, 2), c - _basis(h, 2), c + _basis(h, 3), c - _basis(h, 3)]
    layer = np.stack([c + 3 * u, *roles])
    samples = np.stack([layer, layer + 5 * _basis(h, 4)], axis=1)
    ids = ["baseline_assistant", "pirate", "poet", "chef", "judge"]
    pca = pca_by_layer(samples, ids, [0, 1])
    res = assistant_axis(samples, ids, [0, 1], pca=pca)
    assert res.default_ids == ["baseline_assistant"]
    assert res.role_ids == ["pirate", "poet", "chef", "judge"]
    np.testing.assert_allclose(res.axis, np.stack([u, u]), atol=1e-6)
    np.testing.assert_allclose(res.norm, [3.0, 3.0])
    np.testing.assert_allclose(res.projections[:, 0], [3, 0, 0, 0, 0], atol=1e-9)
    # The baseline's offset (3) dominates the roles' spread (1): PC1 is the axis.
    np.testing.assert_allclose(res.cos_pc1, [1.0, 1.0], atol=1e-6)


def test_assistant_axis_with_default_set_and_errors():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal((4, 2, 6)).astype(np.float32)
    ids = ["helper", "assistant", "pirate", "poet"]
    res = assistant_axis(samples, ids, [0, 1], default_ids=["helper", "assistant"])
    diff = samples[:2].mean(0) - samples[2:].mean(0)
    np.testing.assert_allclose(
        res.axis, diff / np.linalg.norm(diff, axis=-1, keepdims=True), atol=1e-6
    )
    assert res.cos_pc1 is None
    with pytest.raises(InputError, match="baseline_assistant"):
        assistant_axis(samples, ids, [0, 1])
    with pytest.raises(InputError, match="no role persona"):
        assistant_axis(samples, ids, [0, 1], default_ids=ids)


def test_layer_curves_by_hand():
    # Layer 0: (3,4) and (-3,-4): norms 5, centroid 0, spread 5, relative 1.
    # Layer 1: (6,8) and (6,8): norms 10, spread 0.
    samples = np.array([[[3, 4], [6, 8]], [[-3, -4], [6, 8]]], dtype=np.float32)
    res = layer_curves(samples, ["a", "b"], [10, 11])
    np.testing.assert_allclose(res.norm_mean, [5, 10])
    np.testing.assert_allclose(res.norm_std, [0, 0])
    np.testing.assert_allclose(res.spread, [5, 0])
    np.testing.assert_allclose(res.relative_spread, [1, 0])
    assert res.best_layer == 10


def test_neighbours_and_distances():
    x = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    ids = ["a", "b", "c", "d"]
    nn = nearest_neighbours(x, ids, "a", k=2, centered=False)
    assert [n.persona_id for n in nn] == ["b", "c"]
    np.testing.assert_allclose(nn[0].cosine, 0.9 / np.hypot(0.9, 0.1))
    d = distance_table(x, centered=False)
    np.testing.assert_allclose(d[0, 3], 2.0)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-12)
    with pytest.raises(InputError, match="unknown persona 'zz'"):
        nearest_neighbours(x, ids, "zz")


def test_variant_agreement_on_shared_personas():
    rng = np.random.default_rng(3)
    t = rng.standard_normal((3, 2, 5)).astype(np.float32)
    b = np.stack([t[2], -t[0], 2 * t[1]])  # ids c, a, b
    res = agreement(t, ["a", "b", "c"], b, ["c", "a", "z"], [0, 1], ("templated", "biography"))
    assert res.persona_ids == ["a", "c"]
    np.testing.assert_allclose(res.cosine, [[-1, -1], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(res.mean_by_layer, [0, 0], atol=1e-6)
    with pytest.raises(InputError, match="share no persona"):
        agreement(t, ["a", "b", "c"], b, ["x", "y", "z"], [0, 1], ("templated", "biography"))


def test_a_nan_persona_names_the_fix():
    x = np.zeros((2, 2, 3), np.float32)
    x[1, 1, 2] = np.nan
    with pytest.raises(NonFiniteError) as info:
        similarity_by_layer(x, ["p0", "p1"], [0, 1])
    # `pvrs validate` reports files, it drops nothing: the fix is a forced re-extraction.
    assert "pvrs extract --persona-id p1 --force" in str(info.value) and "drop" not in str(info.value)


def test_axis_without_the_baseline_names_the_api_fix_too():
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    # load_analysis_dataset leaves the baseline out unless asked: the hint says how to keep it.
    with pytest.raises(InputError, match=r"include_baseline=True.*--default-persona \(default_ids=\)"):
        assistant_axis(x, ["a", "b", "c"], [0, 1])


def test_bad_inputs_are_clear():
    x = np.zeros((2, 2, 3), np.float32)
    x[1, 1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="'p1'"):
        similarity_by_layer(x, ["p0", "p1"], [0, 1])
    with pytest.raises(InputError, match="no personas"):
        layer_curves(np.zeros((0, 2, 3), np.float32), [], [0, 1])
    with pytest.raises(InvalidArgumentError, match="layer indices"):
        layer_curves(np.zeros((2, 2, 3), np.float32), ["a", "b"], [0])
    with pytest.raises(InputError, match="at least 2 personas"):
        similarity_by_layer(np.ones((1, 1, 3), np.float32), ["a"], [0])
