"""pvrs.analysis.probes: planted attributes are recovered at the right layer; artifacts round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pvrs.analysis.probes import (
    DiffMeansClassifier,
    attribute_names,
    cross_validate_probe,
    fit_probe,
    load_persona_attributes,
    load_probe_artifact,
    save_probe_artifact,
)
from pvrs.errors import ArtifactError, InputError, InvalidArgumentError

P, H = 40, 24
LAYERS = [2, 5, 9]


@pytest.fixture(scope="module")
def planted():
    """Layer 5 carries a binary 'kind' along one direction, layer 9 a numeric 'age' along
    another; the other layers are noise for each. Every vector also has a large shared offset."""
    rng = np.random.default_rng(0)
    d_kind, d_age = np.eye(H)[3], np.eye(H)[7]
    kind = np.array(["villain", "hero"] * (P // 2))
    age = rng.uniform(20, 80, size=P)
    noise = rng.standard_normal((P, len(LAYERS), H))
    samples = noise + 30.0
    samples[:, 1] += 4.0 * np.where(kind == "hero", 1.0, -1.0)[:, None] * d_kind
    samples[:, 2] += 0.5 * age[:, None] * d_age
    ids = [f"p{i:02d}" for i in range(P)]
    attrs = {
        pid: {"kind": str(k), "age": float(a)} for pid, k, a in zip(ids, kind, age, strict=True)
    }
    attrs["baseline_assistant"] = {}
    ids_all = [*ids, "baseline_assistant"]
    samples_all = np.concatenate([samples, 30.0 + rng.standard_normal((1, len(LAYERS), H))])
    return samples_all.astype(np.float32), ids_all, attrs


@pytest.mark.parametrize("method", ["logistic", "ridge", "diffmeans"])
def test_classification_probe_finds_planted_layer(planted, method):
    samples, ids, attrs = planted
    curve = cross_validate_probe(samples, ids, LAYERS, attrs, "kind", method)
    assert curve.task == "classification"
    assert curve.classes == ["hero", "villain"]
    assert "baseline_assistant" not in curve.persona_ids  # no attribute: left out
    assert curve.best_layer == 5
    acc = {layer: m["accuracy"] for layer, m in zip(curve.layers, curve.metrics, strict=True)}
    assert acc[5] >= 0.95
    assert acc[2] < 0.85 and acc[9] < 0.85
    assert curve.metrics[0]["chance"] == 0.5
    # The planted signal beats what the same layer sweep reaches on shuffled labels.
    assert curve.shuffled_best < 0.9 < max(curve.scores)


def test_chance_belongs_to_the_primary_metric():
    # 13 vs 3: balanced accuracy's chance is 1/2, plain accuracy's the majority share.
    rng = np.random.default_rng(1)
    ids = [f"p{i:02d}" for i in range(16)]
    attrs = {pid: {"side": "a" if i < 13 else "b"} for i, pid in enumerate(ids)}
    curve = cross_validate_probe(rng.standard_normal((16, 2, 8)), ids, [0, 1], attrs, "side",
                                 "diffmeans", folds=3)  # fmt: skip
    assert curve.metrics[0]["chance"] == 0.5 and curve.metrics[0]["majority"] == 13 / 16


def test_ridge_regression_probe_on_numeric_attribute(planted):
    samples, ids, attrs = planted
    curve = cross_validate_probe(samples, ids, LAYERS, attrs, "age", "ridge")
    assert curve.task == "regression" and curve.primary == "r2"
    assert curve.best_layer == 9
    assert curve.metrics[2]["r2"] > 0.9
    assert curve.metrics[0]["r2"] < 0.3
    with pytest.raises(InputError, match="categorical"):
        cross_validate_probe(samples, ids, LAYERS, attrs, "age", "logistic")


@pytest.mark.parametrize("method", ["logistic", "ridge", "diffmeans"])
def test_probe_artifact_round_trip(planted, tmp_path, method):
    samples, ids, attrs = planted
    curve = cross_validate_probe(samples, ids, LAYERS, attrs, "kind", method)
    art = fit_probe(samples, ids, LAYERS, attrs, curve)
    assert art.layer == 5 and art.weight.shape == (1, H)
    save_probe_artifact(art, tmp_path / "probe")
    doc = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert {"schema_version", "attribute", "layer", "method", "metrics", "classes"} <= doc.keys()
    back = load_probe_artifact(tmp_path / "probe")
    assert (back.attribute, back.method, back.layer, back.classes) == (
        "kind",
        method,
        5,
        ["hero", "villain"],
    )
    np.testing.assert_array_equal(back.weight, art.weight)
    x = samples[:P, 1]
    truth = np.array([attrs[p]["kind"] for p in ids[:P]])
    assert (back.predict(x) == truth).mean() >= 0.95
    np.testing.assert_array_equal(back.predict(x), art.predict(x))
    assert back.predict(x[0]).shape == (1,)


def test_artifact_matches_the_fitted_estimator(planted):
    # The saved linear map must reproduce scikit-learn's own predictions.
    from pvrs.analysis.probes import RIDGE_ALPHAS, _make_estimator
    from sklearn.linear_model import RidgeCV

    samples, ids, attrs = planted
    curve = cross_validate_probe(samples, ids, LAYERS, attrs, "age", "ridge")
    art = fit_probe(samples, ids, LAYERS, attrs, curve, layer=5)
    assert art.layer == 5 and art.metrics == curve.metrics[1]
    x = samples[:P, 1]
    y = np.array([attrs[p]["age"] for p in ids[:P]])
    ref = RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y)
    np.testing.assert_allclose(art.predict(x), ref.predict(x), rtol=1e-4, atol=1e-3)
    # Logistic inputs are centered before fitting; the saved bias must absorb that shift.
    curve = cross_validate_probe(samples, ids, LAYERS, attrs, "kind", "logistic")
    art = fit_probe(samples, ids, LAYERS, attrs, curve)
    labels = np.array([attrs[p]["kind"] for p in ids[:P]])
    pipe = _make_estimator("logistic", "classification", 0).fit(samples[:P, 1], labels)
    np.testing.assert_allclose(
        art.decision_function(samples[:P, 1]),
        pipe.decision_function(samples[:P, 1]),
        rtol=1e-3,
        atol=1e-3,
    )


def test_diffmeans_by_hand():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    y = np.array(["a", "a", "b", "b"])
    clf = DiffMeansClassifier().fit(x, y)
    np.testing.assert_allclose(clf.coef_, [[0.0, 4.0]])
    np.testing.assert_allclose(clf.intercept_, [-8.0])  # threshold at y = 2
    assert clf.predict(np.array([[5.0, 1.9], [0.0, 2.1]])).tolist() == ["a", "b"]
    three = DiffMeansClassifier().fit(np.eye(3).repeat(2, axis=0), np.repeat(["x", "y", "z"], 2))
    assert three.predict(np.eye(3)).tolist() == ["x", "y", "z"]


def test_probe_input_errors(planted, tmp_path):
    samples, ids, attrs = planted
    with pytest.raises(InputError, match="no persona has attribute 'colour'"):
        cross_validate_probe(samples, ids, LAYERS, attrs, "colour")
    lonely = {**attrs, "p00": {"kind": "wizard"}}
    with pytest.raises(InputError, match="'wizard' has one persona"):
        cross_validate_probe(samples, ids, LAYERS, lonely, "kind")
    with pytest.raises(ArtifactError, match=r"probe\.json is missing"):
        load_probe_artifact(tmp_path)


def test_load_persona_attributes(tmp_path):
    rows = [
        {"id": "pirate", "name": "Pirate", "templated": "t", "biography": "b", "kind": "villain", "age": 40},
        {"id": "nurse", "name": "Nurse", "templated": "t", "biography": "b", "kind": "hero", "tags": ["x"]},
    ]  # fmt: skip
    path = tmp_path / "personas.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    attrs = load_persona_attributes(path)
    assert attrs == {
        "pirate": {"kind": "villain", "age": 40},
        "nurse": {"kind": "hero", "tags": ["x"]},
    }
    assert attribute_names(attrs) == ["age", "kind"]  # lists are not probe targets
    (tmp_path / "p.json").write_text(json.dumps(rows))
    assert load_persona_attributes(tmp_path / "p.json") == attrs
    builtin = load_persona_attributes()  # the demo personas carry 'kind' and 'tone'
    assert {"kind", "tone"} <= set(attribute_names(builtin))
    with pytest.raises(InputError, match="no such file"):
        load_persona_attributes(tmp_path / "missing.jsonl")


# ---- the reference's probe artifacts (persona-vectors 0.8.10, probe.json schema 2) -----------

REFERENCE = Path(__file__).parent / "data" / "reference_probes"


def _reference_probe(attribute: str, name: str):
    return load_probe_artifact(REFERENCE / "out/tiny__model/answer_mean/templated" / attribute / name)


@pytest.mark.parametrize(
    "attribute, name",
    [
        ("binary_attr", "logistic_regression_layer3"),
        ("binary_attr", "logistic_regression_pca6_layer3"),
        ("categorical_attr", "logistic_regression_layer3"),
        ("ordinal_attr", "ridge_regression_layer3"),
    ],
)
def test_reference_schema_2_probes_reproduce_the_reference_pipeline(attribute, name):
    # Fixtures written by the reference's own save_probe_artifact (make_fixtures.py there);
    # expected.npz holds its scikit-learn pipeline's scores on the same vectors.
    expected = np.load(REFERENCE / "expected.npz")
    art = _reference_probe(attribute, name)
    scores = expected[f"tiny__model__answer_mean__templated__{attribute}__{name}"]
    np.testing.assert_allclose(art.decision_function(expected["x"]), scores, rtol=1e-3, atol=1e-3)
    assert art.layer == 3 and art.meta["source"].endswith("schema 2")
    assert art.weight.shape[1] == 16  # on raw vectors, whatever PCA the reference used
    if attribute == "binary_attr":
        assert art.weight.shape[0] == 1 and art.classes == ["no", "yes"]
        np.testing.assert_array_equal(art.predict(expected["x"]), np.where(scores > 0, "yes", "no"))
    if attribute == "ordinal_attr":
        assert art.task == "regression" and art.meta["class_names"] == ["low", "mid", "high"]


def test_reference_difference_of_means_probe_matches_its_own_direction():
    from pvrs.steering.directions import load_vector, probe_direction
    from safetensors.numpy import load_file

    x = np.load(REFERENCE / "expected.npz")["x"]
    name = "difference_of_means_pca4_layer3"
    art = _reference_probe("binary_attr", name)
    assert art.method == "diffmeans" and art.weight.shape == (1, 16)
    # The reference scores scaler -> PCA features with its `direction`, `direction_bias`.
    t = load_file(str(REFERENCE / "out/tiny__model/answer_mean/templated/binary_attr" / name / "weights.safetensors"))
    features = ((x - t["scaler_mean"]) / t["scaler_scale"] - t["pca_mean"]) @ t["pca_components"].T
    reference = features @ t["direction"] + t["direction_bias"][0]
    np.testing.assert_allclose(art.decision_function(x), reference, rtol=1e-4, atol=1e-4)
    truth = np.where(np.arange(24) % 2, "yes", "no")
    assert (art.predict(x) == truth).mean() >= 0.8  # the planted class, through 4 components
    folder = REFERENCE / "out/tiny__model/answer_mean/templated/binary_attr/logistic_regression_layer3"
    assert probe_direction(folder).shape == (16,)
    # Its weights file holds two rows [-w/2, w/2]: classes, not two layers.
    with pytest.raises(InvalidArgumentError, match="one per class, not layers"):
        load_vector(folder / "weights.safetensors")


def test_a_probe_folder_from_others_with_unreadable_files_is_one_error(tmp_path):
    """A downloaded probe folder whose probe.json is not UTF-8, or whose weights are bfloat16
    (no numpy dtype), is one ArtifactError naming the folder, not a traceback."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "probe.json").write_bytes(b"\xff\xfe")
    save_file({"weight": torch.ones(1, 3), "bias": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ArtifactError, match="is unreadable"):
        load_probe_artifact(tmp_path)
    (tmp_path / "probe.json").write_text('{"schema_version": 1}')
    save_file({"weight": torch.ones(1, 3).bfloat16(), "bias": torch.zeros(1).bfloat16()}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ArtifactError, match="is unreadable"):
        load_probe_artifact(tmp_path)


def _write_probe(folder: Path, doc: dict, rows: int) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "probe.json").write_text(json.dumps(doc))
    w = np.random.default_rng(0).normal(size=(rows, H)).astype(np.float32)
    save_file({"weight": w, "bias": np.zeros(rows, np.float32)}, str(folder / "weights.safetensors"))
    return folder


def test_probe_rows_that_do_not_fit_its_classes_are_refused_naming_the_file(tmp_path):
    """persona-vectors writes a difference-of-means probe as two rows [-d/2, d/2] whatever
    the task: on a 4-class attribute it separates classes 0 and 1 only. Read as a binary
    probe it would predict two of the four classes silently; it is refused, as is any probe
    whose rows do not match its classes (one per class, one for two) or its regression."""
    names = ["a", "b", "c", "d"]
    reference = {
        "schema_version": 2, "attribute_name": "region", "task": "categorical",
        "probe_kind": "difference_of_means", "layer": 3, "class_names": names, "metrics": {},
    }
    cases = {
        "categorical_diffmeans": (reference, 2, "2 weight rows for 4 classes"),
        "numeric_two_rows": ({**reference, "task": "numeric", "probe_kind": "ridge_regression"}, 2, "2 weight rows for a regression"),
        "pvrs_three_rows": ({"format": "pvrs.probe", "schema_version": 1, "attribute": "x", "layer": 1, "method": "logistic", "task": "classification", "classes": ["p", "q"], "metrics": {}}, 3, "3 weight rows for 2 classes"),
    }
    for name, (doc, rows, message) in cases.items():
        folder = _write_probe(tmp_path / name, doc, rows)
        with pytest.raises(ArtifactError, match=message) as caught:
            load_probe_artifact(folder)
        assert str(folder / "weights.safetensors") in str(caught.value)
    # What fits is read: the reference's 4-class logistic probe has one row per class.
    good = _write_probe(tmp_path / "logistic", {**reference, "probe_kind": "logistic_regression"}, 4)
    assert load_probe_artifact(good).weight.shape == (4, H)
