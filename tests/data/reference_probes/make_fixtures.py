"""Write the persona-vectors 0.8.10 probe artifacts that tests/test_analysis_probes.py reads,
with the reference's own code. Run from the repository root with the reference wheel unpacked
on PYTHONPATH (its `persona_data` dependency is stubbed: only two names are imported):

    pip download persona-vectors==0.8.10 --no-deps --python-version 3.12 --only-binary=:all: -d /tmp/pv
    unzip -o /tmp/pv/*.whl -d /tmp/pv/x
    PYTHONPATH=/tmp/pv/x python tests/data/reference_probes/make_fixtures.py
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
for name, attrs in {
    "persona_data": {},
    "persona_data.environment": {"get_artifacts_dir": lambda: Path("artifacts")},
    "persona_data.synth_persona": {"BASELINE_PERSONA_ID": "baseline_assistant"},
}.items():
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module

from persona_vectors import probes  # noqa: E402

# With this scikit-learn a multinomial `coef_` is not C-contiguous and the reference's
# `save_file` refuses it; packing the memory changes no value.
_save_file = probes.save_file
probes.save_file = lambda tensors, path: _save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def main() -> None:
    rng = np.random.default_rng(0)
    n, h = 24, 16
    x = rng.standard_normal((n, h)).astype(np.float32)
    binary = (np.arange(n) % 2).astype(int)
    x[:, 0] += 3.0 * binary  # planted: class 1 sits higher on dimension 0
    ranks = np.arange(n) % 3
    x[:, 1] += 2.0 * ranks  # planted: the ordinal rank grows along dimension 1
    cats = np.arange(n) % 3
    x[:, 2] += 3.0 * (cats == 1)
    x[:, 3] += 3.0 * (cats == 2)
    cases = [
        ("binary", binary, ["no", "yes"], "logistic_regression", None),
        ("binary", binary, ["no", "yes"], "difference_of_means", 4),
        ("ordinal", ranks, ["low", "mid", "high"], "ridge_regression", None),
        ("categorical", cats, ["a", "b", "c"], "logistic_regression", None),
        ("binary", binary, ["no", "yes"], "logistic_regression", 6),
    ]
    expected: dict[str, np.ndarray] = {"x": x}
    for task, y, names, kind, pca in cases:
        labels = probes.AttributeLabels(f"{task}_attr", task, y, [names[v] for v in y], names)
        root = probes.save_probe_artifact(
            X=x, y=y, labels=labels, task=task, probe_kind=kind, layer=3, model_name="tiny/model",
            variant="templated", mask_strategy="answer_mean", n_pca_components=pca,
            output_dir=HERE / "out", metrics={"balanced_accuracy": 1.0, "layer": 3},
        )  # fmt: skip
        key = root.relative_to(HERE / "out").as_posix().replace("/", "__")
        if kind != "difference_of_means":  # the reference's own pipeline, refit the same way
            pipe = probes.make_linear_probe(kind, pca, seed=0)
            pipe.fit(x, y.astype(float) if task == "ordinal" else y)
            scores = pipe.predict(x) if task == "ordinal" else pipe.decision_function(x)
            expected[key] = np.asarray(scores, dtype=np.float64)
        print(root)
    np.savez(HERE / "expected.npz", **expected)


if __name__ == "__main__":
    main()
