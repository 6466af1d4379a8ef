"""Linear probes from persona vectors to persona attributes.

A probe answers "is attribute A linearly readable from the persona vectors at layer l?".
Three methods: `logistic` (classification), `ridge` (regression on a numeric attribute,
`RidgeClassifier` on a categorical one) and `diffmeans` (difference of class means, the
classic persona-vector direction). Scores are cross-validated per layer on out-of-fold
predictions; the chosen probe is refit on all personas and returned as its linear map on
raw vectors, a `ProbeArtifact` (saved and read by `pvrs.analysis.probe_artifacts`).

Options beyond the defaults: `pca_components` (a PCA fitted inside each fold before the
probe, folded back into raw space when saved), ordinal attributes (`ordinal_ranks`: ordered
classes probed as a regression on their ranks) and `drop_rare_classes` (classes too small
to cross-validate left out and reported)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from pvrs.analysis.compute import check_layers, check_samples, layer_position, require_personas
from pvrs.analysis.probe_artifacts import ProbeArtifact, Task, fold_affine, predict_linear

# Saving and reading stay importable from here, where fitting returns what they take.
from pvrs.analysis.probe_artifacts import load_probe_artifact as load_probe_artifact
from pvrs.analysis.probe_artifacts import save_probe_artifact as save_probe_artifact
from pvrs.errors import InputError, InvalidArgumentError

METHODS = ("logistic", "ridge", "diffmeans")
RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 5))


# ---- reading attributes ----------------------------------------------------------------


def load_persona_attributes(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """`{persona id: {attribute: value}}` from a persona file's extra columns (anything but
    id, name, templated, biography), or from the built-in demo personas when `path` is None."""
    from pvrs.extraction.inputs import load_personas

    return {p.id: dict(p.attributes) for p in load_personas(path)}


def attribute_names(attributes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Attribute columns with scalar values (strings, numbers, booleans), sorted."""
    names: set[str] = set()
    for attrs in attributes.values():
        names.update(k for k, v in attrs.items() if _is_scalar(v))
    return sorted(names)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return isinstance(value, (str, bool, int, float))


def ordinal_ranks(
    attributes: Mapping[str, Mapping[str, Any]], attribute: str, order: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """`attributes` with `attribute`'s values replaced by their rank in `order` (lowest
    first), so it is probed as a regression on ranks: an ordered attribute has no classes to
    stratify, and a rank held by one persona is no error. `InputError` names a value that
    `order` lacks."""
    ranks = {str(v): i for i, v in enumerate(order)}
    if len(ranks) < 2:
        raise InputError(f"the order of {attribute!r} needs two or more values, got {list(order)}")
    out: dict[str, dict[str, Any]] = {}
    for pid, attrs in attributes.items():
        value = attrs.get(attribute)
        if value is None or not _is_scalar(value):
            out[pid] = dict(attrs)
            continue
        if str(value) not in ranks:
            raise InputError(
                f"persona {pid!r}: {attribute}={value!r} is not in the order given "
                f"({', '.join(ranks)}); add it"
            )
        out[pid] = {**attrs, attribute: ranks[str(value)]}
    return out


def drop_rare_classes(
    attributes: Mapping[str, Mapping[str, Any]],
    persona_ids: Sequence[str],
    attribute: str,
    min_count: int = 2,
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Leave out the attribute of personas whose class has fewer than `min_count` members
    among `persona_ids`; returns the attributes and `{class: count}` of the classes left out.
    `InputError` when fewer than two classes are left."""
    values = {p: attributes.get(p, {}).get(attribute) for p in persona_ids}
    counts: dict[str, int] = {}
    for v in values.values():
        if v is not None and _is_scalar(v):
            counts[str(v)] = counts.get(str(v), 0) + 1
    rare = {c: n for c, n in counts.items() if n < min_count}
    if not rare:
        return {p: dict(a) for p, a in attributes.items()}, {}
    if len(counts) - len(rare) < 2:
        raise InputError(
            f"attribute {attribute!r}: fewer than two of its classes have {min_count}+ personas "
            f"({', '.join(f'{c}: {n}' for c, n in sorted(counts.items()))}); lower "
            "--min-class-count or add personas"
        )
    left_out = {p for p, v in values.items() if v is not None and str(v) in rare}
    return {
        p: {k: v for k, v in a.items() if k != attribute} if p in left_out else dict(a)
        for p, a in attributes.items()
    }, rare


# ---- the difference-of-means classifier -------------------------------------------------


class DiffMeansClassifier(ClassifierMixin, BaseEstimator):
    """Difference of class means: for two classes one direction `mu_1 - mu_0` with the
    threshold at the midpoint; for more, one-vs-rest directions `mu_c - mu_not_c`, each
    thresholded at its midpoint, predicting the largest score. A scikit-learn estimator,
    so it is cross-validated like the others."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> DiffMeansClassifier:
        x = np.asarray(x, dtype=np.float64)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise InvalidArgumentError("difference of means needs at least two classes")
        pairs = (
            [(self.classes_[1], self.classes_[0])]
            if len(self.classes_) == 2
            else [(c, None) for c in self.classes_]
        )
        coef, intercept = [], []
        for pos, neg in pairs:
            mu_pos = x[y == pos].mean(axis=0)
            mu_neg = x[y == neg].mean(axis=0) if neg is not None else x[y != pos].mean(axis=0)
            w = mu_pos - mu_neg
            coef.append(w)
            intercept.append(-w @ (mu_pos + mu_neg) / 2.0)
        self.coef_ = np.array(coef)
        self.intercept_ = np.array(intercept)
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        scores = np.asarray(x, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, x: np.ndarray) -> np.ndarray:
        return predict_linear(self.decision_function(x), self.classes_)


# ---- cross-validation per layer --------------------------------------------------------


@dataclass(frozen=True)
class ProbeCurve:
    """Cross-validated scores of one probe at every layer. `metrics[i]` belongs to
    `layers[i]`; `primary` names the metric used to pick the best layer."""

    attribute: str
    method: str
    task: Task
    layers: list[int]
    persona_ids: list[str]
    classes: list[Any] | None
    metrics: list[dict[str, float]]
    primary: str
    folds: int
    # The best layer's score is a maximum over layers, so it is optimistic; this is the
    # maximum the same sweep reaches with shuffled labels, the level to beat.
    shuffled_best: float = float("nan")
    pca_components: int | None = None

    @property
    def scores(self) -> np.ndarray:
        return np.array([m[self.primary] for m in self.metrics])

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.nanargmax(self.scores))]


def probe_labels(
    persona_ids: Sequence[str],
    attributes: Mapping[str, Mapping[str, Any]],
    attribute: str,
    task: Task | Literal["auto"] = "auto",
) -> tuple[list[int], np.ndarray, Task]:
    """Rows that have the attribute, their labels, and the task.

    `auto` is regression for numbers and classification for strings and booleans.
    Personas without the attribute (the baseline, usually) are left out."""
    rows, values = [], []
    for i, pid in enumerate(persona_ids):
        value = attributes.get(pid, {}).get(attribute)
        if value is not None and _is_scalar(value):
            rows.append(i)
            values.append(value)
    if not rows:
        raise InputError(
            f"no persona has attribute {attribute!r}; check the column name in the persona file"
        )
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if task == "auto":
        task = "regression" if numeric else "classification"
    if task == "regression":
        if not numeric:
            raise InputError(
                f"attribute {attribute!r} has non-numeric values; it cannot be a regression target"
            )
        return rows, np.asarray(values, dtype=np.float64), task
    return rows, np.asarray([str(v) for v in values]), task


def _make_estimator(method: str, task: Task, seed: int, pca_components: int | None = None) -> Any:
    """Probes act on raw vectors: with far more dimensions than personas, standardising
    would give pure-noise dimensions the same weight as the informative ones. Logistic
    inputs are only centered (its solver converges ~10x faster; the shift is folded into
    the bias when saving). Ridge picks its penalty by efficient leave-one-out, since
    vector scales differ by model and layer. With `pca_components` a PCA (which centers)
    comes first, fitted on each training fold only."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    probe = _make_probe(method, task, seed)
    if pca_components is None:
        return probe
    steps = getattr(probe, "steps", None)
    final = steps[-1][1] if steps else probe
    return make_pipeline(PCA(n_components=pca_components, random_state=seed), final)


def _make_probe(method: str, task: Task, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, RidgeClassifierCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method in ("diffmeans", "logistic") and task == "regression":
        raise InputError(
            f"method {method!r} needs a categorical attribute; use 'ridge' for numbers"
        )
    if method == "diffmeans":
        return DiffMeansClassifier()
    if method == "logistic":
        return make_pipeline(
            StandardScaler(with_std=False), LogisticRegression(max_iter=5000, random_state=seed)
        )
    if method == "ridge":
        return (
            RidgeCV(alphas=RIDGE_ALPHAS)
            if task == "regression"
            else RidgeClassifierCV(alphas=RIDGE_ALPHAS)
        )
    raise InvalidArgumentError(
        f"unknown probe method {method!r}; choose one of {', '.join(METHODS)}"
    )


def _check_pca(pca_components: int | None, n_rows: int, splitter: Any) -> None:
    """PCA cannot have more components than the smallest training fold has personas."""
    if pca_components is None:
        return
    smallest = n_rows - -(-n_rows // splitter.get_n_splits())
    if not 1 <= pca_components <= smallest:
        raise InputError(
            f"--pca-components {pca_components}: the smallest training fold has {smallest} "
            f"personas; use 1..{smallest}"
        )


def _splitter(task: Task, y: np.ndarray, folds: int, seed: int, attribute: str) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise InvalidArgumentError(f"cross-validation needs at least 2 folds, got {folds}")
    if task == "regression":
        require_personas(len(y), 3, f"a regression probe on {attribute!r}")
        return KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise InputError(
            f"attribute {attribute!r} has a single value ({str(classes[0])!r}); a probe needs two or more"
        )
    if counts.min() < 2:
        rare = str(classes[int(np.argmin(counts))])
        raise InputError(
            f"attribute {attribute!r}: class {rare!r} has one persona; cross-validation needs "
            "at least 2 personas per class"
        )
    return StratifiedKFold(n_splits=min(folds, int(counts.min())), shuffle=True, random_state=seed)


def _metrics(task: Task, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if task == "regression":
        from sklearn.metrics import mean_absolute_error, r2_score

        r = float(np.corrcoef(y, pred)[0, 1]) if np.std(pred) > 0 and np.std(y) > 0 else 0.0
        return {
            "r2": float(r2_score(y, pred)),
            "pearson_r": r,
            "mae": float(mean_absolute_error(y, pred)),
        }
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    _, counts = np.unique(y, return_counts=True)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "chance": 1.0 / len(counts),  # of balanced accuracy, the primary metric
        "majority": float(counts.max() / counts.sum()),  # chance level of plain accuracy
    }


def cross_validate_probe(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    attributes: Mapping[str, Mapping[str, Any]],
    attribute: str,
    method: str = "logistic",
    *,
    folds: int = 5,
    seed: int = 0,
    task: Task | Literal["auto"] = "auto",
    shuffled_baseline: bool = True,
    pca_components: int | None = None,
) -> ProbeCurve:
    """Out-of-fold scores of a probe at every layer (same folds at every layer), and, with
    `shuffled_baseline`, the best score the same sweep reaches on shuffled labels."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    rows, y, task = probe_labels(persona_ids, attributes, attribute, task)
    estimator = _make_estimator(method, task, seed, pca_components)
    splitter = _splitter(task, y, folds, seed, attribute)
    _check_pca(pca_components, len(rows), splitter)
    primary = "r2" if task == "regression" else "balanced_accuracy"
    shuffled = np.random.default_rng(seed).permutation(y)
    metrics, null_scores = [], []
    for i in range(x.shape[1]):
        pred = cross_val_predict(clone(estimator), x[rows, i], y, cv=splitter)
        metrics.append(_metrics(task, y, pred))
        if shuffled_baseline:
            null = cross_val_predict(clone(estimator), x[rows, i], shuffled, cv=splitter)
            null_scores.append(_metrics(task, shuffled, null)[primary])
    return ProbeCurve(
        attribute=attribute,
        method=method,
        task=task,
        layers=list(layers),
        persona_ids=[persona_ids[r] for r in rows],
        classes=None if task == "regression" else sorted(set(y.tolist())),
        metrics=metrics,
        primary=primary,
        folds=splitter.get_n_splits(),
        shuffled_best=float(np.nanmax(null_scores)) if null_scores else float("nan"),
        pca_components=pca_components,
    )


# ---- the refit probe -------------------------------------------------------------------


def fit_probe(
    samples: np.ndarray,
    persona_ids: Sequence[str],
    layers: Sequence[int],
    attributes: Mapping[str, Mapping[str, Any]],
    curve: ProbeCurve,
    layer: int | None = None,
    *,
    seed: int = 0,
) -> ProbeArtifact:
    """Refit the probe of `curve` on all its personas at `layer` (default: its best layer)
    and return it as a linear map on raw vectors; the metrics are the curve's
    cross-validated ones at that layer."""
    x = check_samples(samples, persona_ids)
    check_layers(x, layers)
    layer = curve.best_layer if layer is None else layer
    li = layer_position(layers, layer)
    rows, y, task = probe_labels(persona_ids, attributes, curve.attribute, curve.task)
    estimator = _make_estimator(curve.method, task, seed, curve.pca_components)
    weight, bias = _linear_map(estimator.fit(x[rows, li], y))
    return ProbeArtifact(
        attribute=curve.attribute,
        method=curve.method,
        task=task,
        layer=layer,
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        classes=curve.classes,
        metrics=curve.metrics[layer_position(curve.layers, layer)],
        meta={
            "n_personas": len(rows),
            "folds": curve.folds,
            "hidden_size": int(x.shape[2]),
            "pca_components": curve.pca_components,
        },
    )


def _linear_map(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) on raw inputs, folding the pipeline's centering, scaling and PCA
    steps (each affine) into the final linear model."""
    steps = getattr(estimator, "steps", None) or [("probe", estimator)]
    model = steps[-1][1]
    weight = np.atleast_2d(model.coef_).astype(np.float64)
    bias = np.atleast_1d(model.intercept_).astype(np.float64)
    for _, step in reversed(steps[:-1]):
        components = getattr(step, "components_", None)
        scale = getattr(step, "scale_", None)
        weight, bias = fold_affine(weight, bias, step.mean_, scale, components)
    return weight, bias
