"""Saved probes: a probe as a linear map on raw persona vectors at one layer
(`ProbeArtifact`), written as `probe.json` + `weights.safetensors` (`weight` (C, H), `bias`
(C,)), the schema the README's "Probe artifacts" describes. `load_probe_artifact` also reads
the reference tool's schema 2 (persona-vectors 0.8: scaler and PCA tensors before
`weight`/`bias`), folding those steps into the same linear map with `fold_affine`, which
also folds a fitted pipeline's steps (`pvrs.analysis.probes`).

Kept apart from the fitting so that reading a probe loads numpy and safetensors only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pvrs.errors import ArtifactError
from pvrs.jsonio import read_json

SCHEMA_VERSION = 1
FORMAT = "pvrs.probe"  # probe.json's `format`: tells pvrs's schema from the reference's
REFERENCE_SCHEMA_VERSION = 2  # persona-vectors 0.8's probe.json
PROBE_JSON = "probe.json"
WEIGHTS_FILE = "weights.safetensors"

Task = Literal["classification", "regression"]


def predict_linear(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Classes from linear scores: one column (two classes, positive means `classes[1]`)
    or one column per class (the largest wins)."""
    if scores.ndim == 1:
        return classes[(scores > 0).astype(int)]
    return classes[np.argmax(scores, axis=1)]


@dataclass
class ProbeArtifact:
    """A probe as a linear map on raw persona vectors at one layer:
    `scores = x @ weight.T + bias`. Classification: one row per class (one row for two
    classes, positive means `classes[1]`); regression: one row, the prediction."""

    attribute: str
    method: str
    task: Task
    layer: int
    weight: np.ndarray
    bias: np.ndarray
    classes: list[Any] | None
    metrics: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        scores = np.atleast_2d(np.asarray(x, dtype=np.float64)) @ self.weight.T.astype(np.float64)
        scores = scores + self.bias
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for `(N, H)` vectors (or one `(H,)` vector) at the probe's layer."""
        scores = self.decision_function(x)
        if self.task == "regression":
            return scores
        return predict_linear(scores, np.asarray(self.classes, dtype=object))


def fold_affine(
    weight: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray | None,
    scale: np.ndarray | None = None,
    components: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The linear map `z -> z @ weight.T + bias` composed with the step before it,
    `x -> ((x - mean) / scale) @ components.T`: the same map on `x`."""
    weight = np.asarray(weight, dtype=np.float64)
    if components is not None:
        weight = weight @ np.asarray(components, dtype=np.float64)
    if scale is not None:
        weight = weight / np.asarray(scale, dtype=np.float64)
    if mean is not None:
        bias = np.asarray(bias, dtype=np.float64) - weight @ np.asarray(mean, dtype=np.float64)
    return weight, bias


def save_probe_artifact(artifact: ProbeArtifact, directory: str | Path) -> Path:
    """Write `probe.json` and `weights.safetensors` into `directory` (created)."""
    from safetensors.numpy import save

    from pvrs.store import atomic_write_bytes

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "attribute": artifact.attribute,
        "layer": artifact.layer,
        "method": artifact.method,
        "task": artifact.task,
        "metrics": artifact.metrics,
        "classes": artifact.classes,
        **artifact.meta,
    }
    # Bytes through atomic_write_bytes: safetensors' save_file ignores the umask (mode 0o600).
    weights = {"weight": np.ascontiguousarray(artifact.weight), "bias": np.ascontiguousarray(artifact.bias)}
    atomic_write_bytes(directory / WEIGHTS_FILE, save(weights))
    (directory / PROBE_JSON).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return directory


def load_probe_artifact(directory: str | Path) -> ProbeArtifact:
    """Read a probe saved by `save_probe_artifact`, or by the reference tool (probe.json
    schema 2); `ArtifactError` when files are missing or disagree."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    meta_path, weights_path = directory / PROBE_JSON, directory / WEIGHTS_FILE
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise ArtifactError(f"probe artifact {str(directory)!r}: {p.name} is missing")
    try:
        doc = read_json(meta_path)
        tensors = load_file(str(weights_path))
    # ValueError: not UTF-8 JSON; TypeError: a dtype numpy lacks (bfloat16)
    except (ValueError, TypeError, SafetensorError, OSError) as exc:
        raise ArtifactError(f"probe artifact {str(directory)!r} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") not in (
        SCHEMA_VERSION,
        REFERENCE_SCHEMA_VERSION,
    ):
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        raise ArtifactError(
            f"probe artifact {str(directory)!r}: schema_version {version!r}, this pvrs reads "
            f"{SCHEMA_VERSION} (pvrs) and {REFERENCE_SCHEMA_VERSION} (persona-vectors)"
        )
    if "weight" not in tensors or "bias" not in tensors:
        raise ArtifactError(
            f"probe artifact {str(directory)!r}: weights need tensors 'weight' and 'bias'"
        )
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ArtifactError(
            f"probe artifact {str(directory)!r}: weight {weight.shape} and bias {bias.shape} disagree"
        )
    try:
        reference = doc["schema_version"] == REFERENCE_SCHEMA_VERSION
        task = _REFERENCE_TASKS.get(doc["task"]) if reference else doc["task"]
        misfit = _rows_misfit(weight.shape[0], task, doc["class_names" if reference else "classes"])
        if misfit:
            raise ArtifactError(
                f"{weights_path}: {misfit}; pvrs cannot tell which classes the rows score, "
                "so it does not read this probe (refit it with one row per class)"
            )
        if reference:
            return _from_reference(doc, tensors)
        known = {"format", "schema_version", "attribute", "layer", "method", "task", "metrics", "classes"}
        return ProbeArtifact(
            attribute=doc["attribute"],
            method=doc["method"],
            task=doc["task"],
            layer=int(doc["layer"]),
            weight=weight,
            bias=bias,
            classes=doc["classes"],
            metrics=dict(doc["metrics"]),
            meta={k: v for k, v in doc.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"probe artifact {str(directory)!r}: probe.json lacks a valid {exc}"
        ) from None


def _rows_misfit(rows: int, task: object, classes: object) -> str | None:
    """Why `rows` weight rows do not fit the task (None: they fit). A classification has
    one row per class, or one or two rows for two classes (persona-vectors writes
    `[-w/2, w/2]`); a regression one row. persona-vectors saves a difference-of-means probe
    as two rows whatever the task, so on more classes it separates the first two only."""
    if task == "regression":
        return None if rows == 1 else f"{rows} weight rows for a regression (one expected)"
    if task != "classification" or not isinstance(classes, list):
        return None  # an unknown task or missing classes is reported as a missing field
    fits = rows == len(classes) or (rows == 1 and len(classes) == 2)
    return None if fits else f"{rows} weight rows for {len(classes)} classes ({', '.join(map(str, classes))})"


# persona-vectors' probe kinds and tasks, as pvrs names them.
_REFERENCE_METHODS = {
    "logistic_regression": "logistic",
    "ridge_regression": "ridge",
    "difference_of_means": "diffmeans",
}
_REFERENCE_TASKS: dict[str, Task] = {
    "binary": "classification",
    "categorical": "classification",
    "ordinal": "regression",
    "numeric": "regression",
}


def _from_reference(doc: dict[str, Any], tensors: dict[str, np.ndarray]) -> ProbeArtifact:
    """A persona-vectors schema-2 probe as a linear map on raw vectors. Its pipeline is
    scaler (`scaler_mean`, `scaler_scale`), optional PCA (`pca_mean`, `pca_components`), then
    `weight`/`bias`; binary probes store two rows `[-w/2, w/2]`, kept here as the one row
    `w` (positive means `class_names[1]`). Ordinal probes regress on class ranks."""
    kind, task = doc["probe_kind"], doc["task"]
    if kind not in _REFERENCE_METHODS or task not in _REFERENCE_TASKS:
        raise ValueError(f"probe_kind/task ({kind!r}, {task!r})")
    weight, bias = tensors["weight"], tensors["bias"]
    if "pca_components" in tensors:
        weight, bias = fold_affine(weight, bias, tensors["pca_mean"], None, tensors["pca_components"])
    if "scaler_mean" in tensors:
        weight, bias = fold_affine(weight, bias, tensors["scaler_mean"], tensors["scaler_scale"])
    weight, bias = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    if weight.shape[0] == 2 and task in ("binary", "categorical"):
        weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
    metrics = {
        k: float(v)
        for k, v in dict(doc.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return ProbeArtifact(
        attribute=doc["attribute_name"],
        method=_REFERENCE_METHODS[kind],
        task=_REFERENCE_TASKS[task],
        layer=int(doc["layer"]),
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        classes=None if task in ("ordinal", "numeric") else doc.get("class_names"),
        metrics=metrics,
        meta={
            "source": f"persona-vectors probe.json schema {REFERENCE_SCHEMA_VERSION}",
            "reference_task": task,
            "class_names": doc.get("class_names"),
            "model": doc.get("model_name"),
            "variant": doc.get("variant"),
            "mask_strategy": doc.get("mask_strategy"),
            "pca_components": doc.get("n_pca_components"),
            "hidden_size": doc.get("input_dim"),
        },
    )
