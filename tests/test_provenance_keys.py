"""The provenance keys are a constant in two languages: `pvrs.store.PROVENANCE_KEYS` (what a
save records) and `PROVENANCE_KEYS` in rust/manifest/model.rs (what `pvrs validate` type-checks).
These tests keep the two lists, and what the store writes, in agreement."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pvrs import validate
from pvrs.errors import ManifestError
from pvrs.store import PROVENANCE_KEYS, PersonaVectorStore

RUST_MANIFEST = Path(__file__).resolve().parents[1] / "rust" / "manifest" / "model.rs"


def _rust_keys() -> list[str]:
    text = RUST_MANIFEST.read_text(encoding="utf-8")
    found = re.search(r"const PROVENANCE_KEYS: \[&str; \d+\] = \[(.*?)\];", text, re.S)
    assert found, f"PROVENANCE_KEYS not found in {RUST_MANIFEST}"
    return re.findall(r'"([^"]+)"', found.group(1))


def test_rust_and_python_list_the_same_provenance_keys() -> None:
    # The Rust list adds "format", which the store writes next to format_version.
    assert sorted(_rust_keys()) == sorted((*PROVENANCE_KEYS, "format"))


def test_store_writes_every_key_the_validator_checks(tmp_path: Path) -> None:
    store = PersonaVectorStore("org/model", root_dir=tmp_path)
    store.save("a", "templated", np.ones((2, 3), np.float32), name="A", sample_ids=["q"])
    manifest_path = store.manifest_path("templated")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert set(_rust_keys()) <= set(manifest)
    assert validate(tmp_path).ok
    # Each key is one the validator type-checks: a non-string value is reported.
    for key in _rust_keys():
        bad = {**manifest, key: 1}
        manifest_path.write_text(json.dumps(bad), encoding="utf-8")
        report = validate(tmp_path)
        assert any(key in p.message and "string or null" in p.message for p in report.errors), key


def test_a_folder_never_mixes_engines(tmp_path: Path) -> None:
    store = PersonaVectorStore("org/model", root_dir=tmp_path)
    vec = np.ones((2, 3), np.float32)
    store.save("a", "templated", vec, name="A", sample_ids=["q"])
    manifest_path = store.manifest_path("templated")
    old = json.loads(manifest_path.read_text(encoding="utf-8"))
    for key in ("engine", "engine_version"):  # as pvrs wrote folders before engines were recorded
        old.pop(key)
    manifest_path.write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(ManifestError, match="engine='transformers' but this save has engine='vllm'"):
        store.check_compatible("templated", (2, 3), {"engine": "vllm", "engine_version": "0.32.0"})
    # The same engine at another version adds to the folder.
    store.save("b", "templated", vec, name="B", sample_ids=["q"], provenance={"engine": "transformers", "engine_version": "5.18.0"})
    store.save("c", "templated", vec, name="C", sample_ids=["q"], provenance={"engine": "transformers", "engine_version": "5.24.0"})
    assert json.loads(manifest_path.read_text(encoding="utf-8"))["engine_version"] == "5.24.0"
    fresh = PersonaVectorStore("org/model", root_dir=tmp_path / "other")
    fresh.save("a", "templated", vec, name="A", sample_ids=["q"], provenance={"engine": "vllm", "engine_version": "0.32.0"})
    with pytest.raises(ManifestError, match="engine='vllm' but this save has engine='transformers'"):
        fresh.save("b", "templated", vec, name="B", sample_ids=["q"], provenance={"engine": "transformers"})
    assert set(json.loads(fresh.manifest_path("templated").read_text(encoding="utf-8"))["personas"]) == {"a"}
