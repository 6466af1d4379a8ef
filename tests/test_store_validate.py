"""`pvrs validate` over real store trees, broken trees and hostile files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from pvrs.cli import main
from pvrs.store import PersonaVectorStore, VectorRecord
from pvrs.store.validation import validate

MODEL = "org/m"


@pytest.fixture
def store(tmp_path: Path) -> PersonaVectorStore:
    store = PersonaVectorStore(MODEL, root_dir=tmp_path / "activations")
    rng = np.random.default_rng(0)
    for variant in ("templated", "biography"):
        store.save_many(
            variant,
            [VectorRecord(f"p{i}", rng.standard_normal((3, 5)), f"P{i}", ["q1"]) for i in range(4)],
        )
    store.save_samples("p0", "templated", rng.standard_normal((2, 3, 5)), ["q1", "q2"])
    return store


def kinds(path: Path, deep: bool = False) -> set[str]:
    return {p.kind for p in validate(path, deep=deep).problems}


def raw_file(header: dict, data: bytes, length: int | None = None) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def test_a_store_tree_is_clean(
    store: PersonaVectorStore, capsys: pytest.CaptureFixture[str]
) -> None:
    report = validate(store.root_dir, deep=True)
    assert report.ok and report.problems == []
    assert (report.variant_dirs, report.personas, report.files_checked) == (2, 8, 9)
    assert main(["validate", str(store.root_dir), "--deep"]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    assert main(["validate", str(store.variant_dir("templated"))]) == 0


def test_validate_defaults_to_the_artifacts_store(
    store: PersonaVectorStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARTIFACTS_DIR", str(store.root_dir.parent))
    assert main(["validate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["personas"] == 8


def test_every_problem_is_reported(
    store: PersonaVectorStore, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = store.variant_dir("templated")
    (folder / "p0.safetensors").write_bytes(
        (folder / "p0.safetensors").read_bytes()[:50]
    )  # truncated
    (folder / "p1.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")  # huge header length
    overlap = {
        "activations": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 60]},
        "other": {"dtype": "F32", "shape": [1], "data_offsets": [56, 60]},
    }
    (folder / "p2.safetensors").write_bytes(raw_file(overlap, bytes(60)))
    wrong = {"activations": {"dtype": "I32", "shape": [3, 5], "data_offsets": [0, 60]}}
    (folder / "p3.safetensors").write_bytes(raw_file(wrong, bytes(60)))
    os.mkfifo(folder / "fifo.safetensors")  # must not hang
    outside = store.root_dir.parent / "outside.safetensors"
    outside.write_bytes((store.variant_dir("biography") / "p0.safetensors").read_bytes())
    (folder / "linked.safetensors").symlink_to(outside)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["personas"]["../escape"] = {"name": "x", "sample_ids": []}
    manifest["personas"]["ghost"] = {"name": "g", "sample_ids": "q1"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / ".p9.safetensors.abcd.tmp").write_bytes(b"half")

    found = kinds(store.root_dir)
    for kind in (
        "bad_header",
        "wrong_dtype",
        "not_a_file",
        "symlink_outside_tree",
        "unsafe_persona_id",
        "missing_tensor",
        "bad_manifest",
        "orphan_tensor",
        "stale_temp_file",
    ):
        assert kind in found, kind
    messages = [str(p) for p in validate(store.root_dir).problems]
    assert any("p1.safetensors" in m and "exceeds" in m for m in messages)
    assert any("p2.safetensors" in m and "overlap" in m for m in messages)
    assert any("p0.safetensors" in m and "truncated" in m for m in messages)
    assert main(["validate", str(store.root_dir)]) == 1
    assert main(["validate", str(store.root_dir), "--json"]) == 1
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["ok"] is False and len(report["problems"]) >= 9
    assert validate(store.variant_dir("biography")).ok  # the other variant is untouched


def test_deep_checks_hash_and_non_finite(store: PersonaVectorStore) -> None:
    path = store.tensor_path("p1", "biography")
    data = bytearray(path.read_bytes())
    data[-4:] = struct.pack("<f", float("inf"))
    path.write_bytes(bytes(data))
    assert kinds(store.root_dir) == set()
    assert kinds(store.root_dir, deep=True) == {"sha256_mismatch", "non_finite"}
    problem = next(
        p for p in validate(store.root_dir, deep=True).problems if p.kind == "non_finite"
    )
    assert "layer 2" in problem.message


def test_shape_disagreement_and_samples(store: PersonaVectorStore) -> None:
    rng = np.random.default_rng(1)
    other = PersonaVectorStore(MODEL, root_dir=store.root_dir / "elsewhere")
    other.save("p1", "templated", rng.standard_normal((4, 5)), name="x", sample_ids=["q"])
    os.replace(other.tensor_path("p1", "templated"), store.tensor_path("p1", "templated"))
    samples = store.samples_path("p0", "templated")
    from safetensors.numpy import save_file

    save_file(
        {"activations": np.zeros((2, 3, 5), np.float32)},
        samples,
        metadata={"sample_ids": '["only-one"]'},
    )
    found = kinds(store.variant_dir("templated"))
    assert {"shape_mismatch", "bad_samples"} <= found


def test_stale_temp_files_are_only_warnings(store: PersonaVectorStore) -> None:
    (store.variant_dir("templated") / ".p0.safetensors.x1.tmp").write_bytes(b"")
    report = validate(store.root_dir)
    assert report.ok and [p.kind for p in report.warnings] == ["stale_temp_file"]


def test_missing_path_and_empty_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().out


def test_a_06_tree_validates(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "m" / "answer_mean" / "templated"
    folder.mkdir(parents=True)
    save_file(
        {"activations": torch.zeros(3, 5, dtype=torch.bfloat16)}, str(folder / "a.safetensors")
    )
    (folder / "manifest.json").write_text(
        json.dumps(
            {"num_layers": 3, "hidden_size": 5, "personas": {"a": {"name": "A", "sample_ids": []}}}
        )
    )
    assert validate(tmp_path, deep=True).ok


def test_validate_without_a_store_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "nothing"))
    assert main(["validate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no store" in err[0] and "pvrs extract" in err[0] and "os error" not in err[0], err
    assert main(["validate", str(tmp_path / "typo")]) == 2
    assert f"{tmp_path / 'typo'}: no store" in capsys.readouterr().err
