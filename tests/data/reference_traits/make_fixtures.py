"""Write the persona-vectors trait vector stores that tests/test_attribute.py reads, both
ways, with the reference's own `TraitVectorStore` (persona-vectors main, commit a04e221, not
on PyPI: 0.8.10 has no trait store). Run from the repository root with the reference's
`src/` on PYTHONPATH (its `persona_data` dependency is stubbed: only two names are imported):

    git clone https://github.com/implicit-personalization/persona-vectors /tmp/pvm
    git -C /tmp/pvm checkout a04e221e4db2ad637ccaf06f82b413b44d078fc2
    PYTHONPATH=/tmp/pvm/src:python python tests/data/reference_traits/make_fixtures.py

- `reference_written/`: the reference saves two attribute deltas with the entry its
  `save_trait_deltas` writes; `expected.npz` keeps the deltas it was given.
- `pvrs_written/`: pvrs's store saves the same deltas and entries; the reference reads them
  back (`load`, `metadata`, `list_attributes`, `list_layers`) and must return what went in.
  The test checks that pvrs still writes these bytes, so what the reference read here it reads.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
for name, attrs in {
    "persona_data": {},
    "persona_data.environment": {"get_artifacts_dir": lambda: Path("artifacts")},
    "persona_data.synth_persona": {"BASELINE_PERSONA_ID": "baseline_assistant"},
}.items():
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module

from persona_vectors.artifacts import TraitVectorStore as ReferenceStore  # noqa: E402
from pvrs.store.traits import TraitVectorStore as PvrsStore  # noqa: E402

MODEL, STRATEGY, L, H = "tiny/model", "persona_mean", 3, 8


def cases() -> dict[str, tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(0)
    out = {}
    for attribute, (value_from, value_to) in {"sex": ("female", "male"), "occupation=nurse": ("engineer", "nurse")}.items():
        delta = rng.standard_normal((L, H)).astype(np.float32)
        entry = {
            "value_from": value_from, "value_to": value_to, "n_personas": 4,
            "auc_by_layer": {str(i): 0.5 + 0.1 * i for i in range(L)},
            "act_norm_by_layer": {str(i): 10.0 + i for i in range(L)},
        }  # fmt: skip
        out[attribute] = (delta, entry)
    return out


def main() -> None:
    for folder in ("reference_written", "pvrs_written"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
    expected: dict[str, np.ndarray] = {}
    reference = ReferenceStore(MODEL, root_dir=HERE / "reference_written", mask_strategy=STRATEGY)
    pvrs = PvrsStore(MODEL, root_dir=HERE / "pvrs_written", mask_strategy=STRATEGY)
    for attribute, (delta, entry) in cases().items():
        reference.save(attribute, torch.from_numpy(delta), **entry)
        pvrs.save(attribute, delta, entry)
        expected[attribute] = delta
    # The reference reads what pvrs wrote.
    back = ReferenceStore(MODEL, root_dir=HERE / "pvrs_written", mask_strategy=STRATEGY)
    read = {"list_attributes": back.list_attributes(), "list_layers": back.list_layers(["templated"], ["sex"])}
    for attribute, (delta, entry) in cases().items():
        assert torch.equal(back.load(attribute), torch.from_numpy(delta)), attribute
        assert back.metadata(attribute) == entry, attribute
        read[attribute] = back.metadata(attribute)
    (HERE / "reference_read.json").write_text(json.dumps(read, indent=2) + "\n")
    np.savez(HERE / "expected.npz", **expected)


if __name__ == "__main__":
    main()
