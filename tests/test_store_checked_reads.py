"""Every reader of the local store opens it through the checks of `pvrs validate`: a typed
manifest, tensors that are regular files inside the store, no folder symlinked out of it,
no tensors hidden by a missing manifest; and resume checks what it skips."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pvrs.errors import ArtifactError, ManifestError
from pvrs.store import PersonaVectorStore, VectorRecord, load_analysis_dataset
from pvrs.store.validation import validate
from safetensors.numpy import save, save_file

from tests.test_store import MODEL, H, L, vec


@pytest.fixture
def store(tmp_path: Path) -> PersonaVectorStore:
    store = PersonaVectorStore(MODEL, root_dir=tmp_path / "store")
    store.save_many("templated", [VectorRecord(p, vec(i), p.title(), ["q"]) for i, p in enumerate("ab")])
    return store


def _edit_manifest(store: PersonaVectorStore, **changes: object) -> None:
    path = store.manifest_path("templated")
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"num_layers": "4"}, '"num_layers" must be a positive integer, got "4"'),
        ({"hidden_size": -8}, '"hidden_size" must be a positive integer'),
        ({"num_layers": 1e30}, '"num_layers" must be a positive integer, got 1e+30'),
        ({"personas": {"a": "A"}}, 'personas["a"]: must be an object'),
        ({"personas": {"a": {"name": "A", "sample_ids": "q"}}}, '"sample_ids" must be a list'),
        ({"personas": {"a": {"name": "A", "sample_ids": ["q"], "n_samples": -5}}}, '"n_samples" must be an integer'),
        ({"model": "someone/else"}, 'records model="someone/else" but lives in model folder "org__tiny-model"'),
    ],
)
def test_a_mistyped_manifest_is_one_manifest_error(
    store: PersonaVectorStore, changes: dict[str, object], said: str
) -> None:
    _edit_manifest(store, **changes)
    assert not validate(store.root_dir).ok
    for read in (
        lambda: store.list_personas(["templated"]),
        lambda: store.available_variants(),  # analyze's pick: never another variant silently
        lambda: load_analysis_dataset(store),
        lambda: store.save("c", "templated", vec(2), name="C", sample_ids=["q"]),
    ):
        with pytest.raises(ManifestError, match=r"manifest\.json: .*pvrs validate") as info:
            read()
        assert said in str(info.value)


def test_symlinked_tensors_leaving_the_store_are_not_read(store: PersonaVectorStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    path = store.tensor_path("a", "templated")
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    assert "symlink_outside_tree" in {p.kind for p in validate(store.root_dir).problems}
    for read in (
        lambda: store.load("a", "templated"),
        lambda: store.stack(["a", "b"], "templated"),
        lambda: store.mean("templated"),
        lambda: load_analysis_dataset(store).samples("templated"),
    ):
        with pytest.raises(ArtifactError, match=r"a\.safetensors: symlink points outside the store"):
            read()
    path.unlink()
    path.symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="outside the store"):
        store.load("a", "templated")
    # A link inside the store would pass b's vector for a's: refused too, as validate does.
    path.unlink()
    path.symlink_to(store.tensor_path("b", "templated"))
    assert "symlinked_file" in {p.kind for p in validate(store.root_dir).problems}
    for read in (lambda: store.load("a", "templated"), lambda: store.mean("templated")):
        with pytest.raises(ArtifactError, match=r"a\.safetensors: a symbolic link \(to .*b\.safetensors\)"):
            read()
    assert not store.has("a", "templated", ["q"])  # resume computes it again


def test_non_regular_and_wrong_shape_tensors_are_refused(store: PersonaVectorStore) -> None:
    path = store.tensor_path("a", "templated")
    path.unlink()
    os.mkfifo(path)  # a reader opening it would block forever
    with pytest.raises(ArtifactError, match="not a regular file"):
        store.load("a", "templated")
    path.unlink()
    save_file({"activations": vec(0, (L, H + 1))}, str(path))
    with pytest.raises(ArtifactError, match=r"shape \(4, 9\) but the manifest says \(4, 8\)"):
        store.stack(["a"], "templated", layers=[0])


def test_a_variant_folder_symlinked_out_of_the_store_is_refused(store: PersonaVectorStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    store.variant_dir("templated").rename(elsewhere)
    store.variant_dir("templated").symlink_to(elsewhere, target_is_directory=True)
    assert "symlink_outside_tree" in {p.kind for p in validate(store.root_dir).problems}
    for use in (
        lambda: store.list_personas(["templated"]),
        lambda: store.load("a", "templated"),
        lambda: store.save("c", "templated", vec(2), name="C", sample_ids=["q"]),
    ):
        with pytest.raises(ArtifactError, match="a symlink leads this folder out of the store"):
            use()
    assert sorted(p.name for p in elsewhere.iterdir()) == [".manifest.lock", "a.safetensors", "b.safetensors", "manifest.json"]


def test_tensors_without_a_manifest_are_an_error_and_never_orphaned(store: PersonaVectorStore) -> None:
    store.manifest_path("templated").unlink()
    before = {p.name: p.read_bytes() for p in store.variant_dir("templated").glob("*.safetensors")}
    for use in (
        lambda: store.list_personas(["templated"]),
        lambda: store.available_variants(),
        lambda: load_analysis_dataset(store),
        lambda: store.save("c", "templated", vec(2), name="C", sample_ids=["q"]),
    ):
        with pytest.raises(ManifestError, match=r"holds \.safetensors files but no manifest\.json; restore"):
            use()
    after = {p.name: p.read_bytes() for p in store.variant_dir("templated").glob("*.safetensors")}
    assert after == before and not store.manifest_path("templated").exists()


def test_a_symlinked_manifest_is_refused(store: PersonaVectorStore, tmp_path: Path) -> None:
    manifest = store.manifest_path("templated")
    (tmp_path / "m.json").write_bytes(manifest.read_bytes())
    manifest.unlink()
    manifest.symlink_to(tmp_path / "m.json")
    with pytest.raises(ManifestError, match="not a regular file"):
        store.list_personas(["templated"])


def _nan_with_updated_sha(store: PersonaVectorStore, path: Path) -> None:
    data = save({"activations": np.full((L, H), np.nan, np.float32)})
    path.write_bytes(data)
    manifest = json.loads(store.manifest_path("templated").read_text())
    manifest["personas"]["a"]["sha256"] = hashlib.sha256(data).hexdigest()
    store.manifest_path("templated").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-4]), "truncated"),
        (lambda p: os.truncate(p, 2 << 30), "2147483440 trailing bytes"),  # sparse 2 GB
        (lambda p: (p.unlink(), p.symlink_to("/etc/passwd")), "outside the store"),
        (lambda p: p.write_bytes(p.read_bytes()[:-8] + b"\0" * 8), "sha256 differs"),
        (lambda p: save_file({"activations": vec(0, (L + 1, H))}, str(p)), "shape (5, 8)"),
    ],
)
def test_has_checks_the_file_it_would_skip(
    store: PersonaVectorStore, damage: Callable[[Path], object], reason: str
) -> None:
    damage(store.tensor_path("a", "templated"))
    assert not store.has("a", "templated", ["q"])
    assert reason in (store.tensor_problem("a", "templated") or "")
    assert store.has("b", "templated", ["q"]) and store.tensor_problem("b", "templated") is None


def test_has_refuses_a_nan_file_whose_sha256_was_updated(store: PersonaVectorStore) -> None:
    _nan_with_updated_sha(store, store.tensor_path("a", "templated"))
    # The digest matches, so the scan that `validate --deep` does is what catches it.
    assert not store.has("a", "templated", ["q"])
    assert "NaN" in (store.tensor_problem("a", "templated") or "")


def test_a_save_cleans_temp_files_of_a_killed_run(store: PersonaVectorStore) -> None:
    folder = store.variant_dir("templated")
    stale = [folder / ".a.safetensors.x1y2.tmp", folder / ".manifest.json.abc.tmp"]
    # Per-sample writes take the folder's lock too, so their temp files are a killed run's.
    stale.append(folder / "samples" / ".a.safetensors.q.tmp")
    stale[-1].parent.mkdir()
    for path in stale:
        path.write_bytes(b"partial")
    assert {p.kind for p in validate(folder).problems} == {"stale_temp_file"}
    store.save("c", "templated", vec(2), name="C", sample_ids=["q"])
    assert not any(p.exists() for p in stale)
    assert validate(folder).problems == []


def test_a_samples_save_cleans_temp_files_and_validate_finds_them_anywhere(
    store: PersonaVectorStore,
) -> None:
    folder = store.variant_dir("templated")
    stale = folder / "samples" / ".a.safetensors.x1.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"partial")
    store.save_samples("a", "templated", vec(3, (2, L, H)), ["q1", "q2"])
    assert not stale.exists()
    # A run killed in its first save leaves a folder holding temp files only.
    first = store.variant_dir("biography")
    first.mkdir()
    (first / ".p.safetensors.x2.tmp").write_bytes(b"partial")
    assert [(Path(p.path).name, p.kind) for p in validate(store.root_dir).problems] == [
        (".p.safetensors.x2.tmp", "stale_temp_file")
    ]


def test_packaging_for_push_refuses_hidden_tensors_and_folders_leaving_the_store(
    store: PersonaVectorStore, tmp_path: Path
) -> None:
    from pvrs.hub import package

    manifest = store.manifest_path("templated")
    kept = manifest.read_bytes()
    manifest.unlink()
    with pytest.raises(ManifestError, match=r"no manifest\.json; restore"):
        package(MODEL, tmp_path / "pkg", root_dir=store.root_dir, progress=False)
    manifest.write_bytes(kept)
    (tmp_path / "elsewhere").mkdir()
    store.variant_dir("biography").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ArtifactError, match="symlink points outside the store"):
        package(MODEL, tmp_path / "pkg", root_dir=store.root_dir, progress=False)
    assert not (tmp_path / "pkg").exists() or not any((tmp_path / "pkg").iterdir())


def test_half_precision_is_a_shallow_validate_warning(store: PersonaVectorStore) -> None:
    path = store.tensor_path("a", "templated")
    save_file({"activations": vec(0).astype(np.float16)}, str(path))
    report = validate(store.root_dir)
    assert report.ok and [p.kind for p in report.warnings] == ["half_precision"]
    assert "F16" in report.warnings[0].message
    np.testing.assert_array_equal(store.load("a", "templated"), vec(0).astype(np.float16).astype(np.float32))


def test_a_write_outside_the_store_removes_temp_files_of_dead_writers(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pvrs.store import atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = tmp_path / f".answers.jsonl.{dead.pid}.k1ll.tmp"
    live = tmp_path / f".answers.jsonl.{os.getpid()}.w1p.tmp"  # a write in flight
    other = tmp_path / f".other.jsonl.{dead.pid}.x.tmp"  # another file's: its own next write
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "answers.jsonl", b"x")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "answers.jsonl").read_bytes() == b"x"
