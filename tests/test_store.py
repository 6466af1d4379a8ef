"""The artifact store: layout, manifest, atomic and concurrent writes, 0.6.x compatibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pvrs.errors import (
    ArtifactError,
    InvalidArgumentError,
    ManifestError,
    NonFiniteError,
    PersonaIdError,
)
from pvrs.store import (
    BASELINE_PERSONA_ID,
    ActivationStore,
    PersonaVectorStore,
    VectorNotFoundError,
    VectorRecord,
    discover_activation_models,
    load_analysis_dataset,
    manifest_text,
    validate_persona_id,
)
from safetensors.numpy import load_file
from safetensors.torch import save_file

MODEL = "org/tiny-model"
L, H = 4, 8


def vec(seed: int, shape: tuple[int, ...] = (L, H)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> PersonaVectorStore:
    return PersonaVectorStore(MODEL, root_dir=tmp_path)


def test_layout_and_manifest(store: PersonaVectorStore, tmp_path: Path) -> None:
    path = store.save(
        "pirate",
        "templated",
        vec(0),
        name="Pirate",
        sample_ids=["q1", "q2"],
        n_tokens=17,
        provenance={"dtype": "bfloat16", "revision": "abc"},
    )
    folder = tmp_path / "org__tiny-model" / "answer_mean" / "templated"
    assert path == folder / "pirate.safetensors"
    np.testing.assert_array_equal(load_file(path)["activations"], vec(0))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_layers"] == L and manifest["hidden_size"] == H
    assert manifest["model"] == MODEL and manifest["variant"] == "templated"
    assert manifest["mask_strategy"] == "answer_mean" and manifest["dtype"] == "bfloat16"
    assert manifest["layer_convention"] == "decoder_block_outputs"
    entry = manifest["personas"]["pirate"]
    assert entry["name"] == "Pirate" and entry["sample_ids"] == ["q1", "q2"]
    assert entry["n_samples"] == 2 and entry["n_tokens"] == 17
    import hashlib

    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_roundtrip_torch_bf16_input_is_stored_float32(store: PersonaVectorStore) -> None:
    t = torch.from_numpy(vec(1)).to(torch.bfloat16)
    store.save("a", "templated", t, name="A", sample_ids=["q"])
    out = store.load("a", "templated")
    assert out.dtype == np.float32 and out.shape == (L, H)
    np.testing.assert_array_equal(out, t.float().numpy())


def test_reference_semantics(store: PersonaVectorStore) -> None:
    for pid in ("b", "a", BASELINE_PERSONA_ID):
        store.save(pid, "templated", vec(2), name=pid.upper(), sample_ids=["q"])
    store.save("a", "biography", vec(3), name="", sample_ids=["q"])
    store.save(BASELINE_PERSONA_ID, "biography", vec(3), name="Base", sample_ids=["q"])
    assert store.list_personas(["templated"]) == ["a", "b"]
    assert store.list_personas() == ["a"]
    assert store.list_personas(include_baseline=True) == ["a", BASELINE_PERSONA_ID]
    assert store.persona_names(["a", "b"]) == {"a": "A", "b": "B"}  # first non-empty name
    assert store.persona_names(["a"], ["biography"]) == {}
    assert store.persona_names(["a", "b"], ["templated"]) == {"a": "A", "b": "B"}
    assert store.available_variants() == ["templated", "biography"]
    assert store.available_variants(["templated", "other"]) == ["templated"]
    assert store.list_layers() == list(range(L))
    assert store.list_layers(["templated", "other"]) == []
    assert store.list_layers(persona_ids=["b"]) == []
    assert discover_activation_models(store.root_dir) == [MODEL]
    assert PersonaVectorStore.discover_activation_models(store.root_dir, "persona_mean") == []
    assert ActivationStore is PersonaVectorStore


def test_has_is_the_resume_check(store: PersonaVectorStore) -> None:
    assert not store.has("a", "templated")
    store.save("a", "templated", vec(0), name="A", sample_ids=["q1", "q2"])
    assert store.has("a", "templated")
    assert store.has("a", "templated", ["q1", "q2"])
    assert not store.has("a", "templated", ["q1"])
    store.tensor_path("a", "templated").unlink()
    assert not store.has("a", "templated")


def test_save_many_writes_the_manifest_once(
    store: PersonaVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pvrs.store.local as mod

    writes: list[Path] = []
    real = mod.atomic_write_bytes
    monkeypatch.setattr(mod, "atomic_write_bytes", lambda p, d: (writes.append(p), real(p, d)))
    records = [VectorRecord(f"p{i}", vec(i), f"P{i}", [f"q{i}"], n_tokens=i) for i in range(50)]
    paths = store.save_many("templated", records)
    assert len(paths) == 50
    assert sum(p.name == "manifest.json" for p in writes) == 1
    assert store.list_personas(["templated"]) == sorted(f"p{i}" for i in range(50))
    np.testing.assert_array_equal(store.load("p7", "templated"), vec(7))


def test_batches_reuse_the_parsed_manifest_until_another_writer_changes_it(
    store: PersonaVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch after the first neither re-parses nor re-encodes the rows already saved (that
    # made each batch slower as the store grew); another process's write is never missed.
    import pvrs.store.local as mod
    import pvrs.store.manifest as manifest_mod

    parses: list[Path] = []
    real_parse = mod.parse_manifest
    monkeypatch.setattr(mod, "parse_manifest", lambda p, raw: (parses.append(p), real_parse(p, raw))[1])
    encoded: list[object] = []
    real_json = manifest_mod._JSON

    class CountingEncoder:
        @staticmethod
        def encode(value: object) -> str:
            encoded.append(value)
            return real_json.encode(value)

    monkeypatch.setattr(manifest_mod, "_JSON", CountingEncoder)

    def batch(start: int) -> list[VectorRecord]:
        return [VectorRecord(f"p{i}", vec(i), f"P{i}", [f"q{i}"]) for i in range(start, start + 5)]

    store.save_many("templated", batch(0))
    held = store.read_manifest("templated")
    assert held is not None and len(held["personas"]) == 5
    parses.clear()
    encoded.clear()
    store.save_many("templated", batch(5))
    assert parses == []
    assert sum(isinstance(v, dict) and "sample_ids" in v for v in encoded) == 2 * 5
    assert len(held["personas"]) == 5  # a manifest already handed out does not change
    other = PersonaVectorStore(MODEL, root_dir=store.root_dir)
    other.save("x", "templated", vec(9), name="X", sample_ids=["q"])
    parses.clear()
    store.save_many("templated", batch(10))
    assert len(parses) == 1
    assert store.list_personas(["templated"]) == sorted([*(f"p{i}" for i in range(15)), "x"])
    raw = store.manifest_path("templated").read_bytes()
    assert raw.decode() == manifest_text(json.loads(raw))


def test_existing_entries_are_kept_and_updated(store: PersonaVectorStore) -> None:
    store.save("a", "templated", vec(0), name="A", sample_ids=["q"])
    store.save("b", "templated", vec(1), name="B", sample_ids=["q"])
    store.save("a", "templated", vec(2), name="A2", sample_ids=["q", "r"])
    assert store.list_personas(["templated"]) == ["a", "b"]
    np.testing.assert_array_equal(store.load("a", "templated"), vec(2))
    assert store.persona_names(["a"], ["templated"]) == {"a": "A2"}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a/b",
        "a\\b",
        "..",
        "x..y",
        "tab\there",
        "nul\x00",
        "del\x7f",
        "x" * 201,
        "é" * 101,
        "\ud800",
    ],
)
def test_unsafe_persona_ids_are_refused(store: PersonaVectorStore, bad: str) -> None:
    with pytest.raises(PersonaIdError, match="persona id"):
        store.save(bad, "templated", vec(0), name="x", sample_ids=["q"])
    assert not store.variant_dir("templated").exists() or not list(
        store.variant_dir("templated").glob("*.safetensors")
    )


@pytest.mark.parametrize(
    "good", ["pirate", "baseline_assistant", "日本語の人", "🏴‍☠️ captain", "a.b-c", "x" * 200]
)
def test_unicode_ids_roundtrip(store: PersonaVectorStore, good: str) -> None:
    assert validate_persona_id(good) == good
    store.save(good, "templated", vec(0), name=good, sample_ids=["q"])
    assert store.list_personas(["templated"], include_baseline=True) == [good]
    np.testing.assert_array_equal(store.load(good, "templated"), vec(0))


def test_non_finite_is_refused_and_nothing_written(store: PersonaVectorStore) -> None:
    store.save("a", "templated", vec(0), name="A", sample_ids=["q"])
    bad = vec(1)
    bad[2, 3] = np.nan
    bad[3, 0] = np.inf
    good = VectorRecord("b", vec(2), "B", ["q"])
    with pytest.raises(NonFiniteError, match=r"persona 'c'.*2 NaN/Inf.*\[2, 3\]"):
        store.save_many("templated", [good, VectorRecord("c", bad, "C", ["q"])])
    assert store.list_personas(["templated"]) == ["a"]
    assert not store.tensor_path("b", "templated").exists()


def test_shape_and_provenance_conflicts(store: PersonaVectorStore) -> None:
    store.save(
        "a", "templated", vec(0), name="A", sample_ids=["q"], provenance={"dtype": "float32"}
    )
    with pytest.raises(ManifestError, match="num_layers=4 but this save has num_layers=5"):
        store.save("a", "templated", vec(1, (5, H)), name="A", sample_ids=["q"])
    with pytest.raises(ManifestError, match=r"dtype='float32'.*dtype='bfloat16'"):
        store.save(
            "a", "templated", vec(1), name="A", sample_ids=["q"], provenance={"dtype": "bfloat16"}
        )
    np.testing.assert_array_equal(store.load("a", "templated"), vec(0))  # nothing overwritten
    with pytest.raises(InvalidArgumentError, match="shape"):
        store.save("z", "templated", np.zeros((2, 3, 4)), name="Z", sample_ids=["q"])
    with pytest.raises(InvalidArgumentError, match="variant='biography'"):
        store.save(
            "a",
            "templated",
            vec(0),
            name="A",
            sample_ids=["q"],
            provenance={"variant": "biography"},
        )


def test_missing_vector_errors_name_the_input(store: PersonaVectorStore) -> None:
    with pytest.raises(VectorNotFoundError, match="no manifest"):
        store.load("ghost", "templated")
    store.save("a", "templated", vec(0), name="A", sample_ids=["q"])
    with pytest.raises(FileNotFoundError, match=r"'ghost'.*known personas: a"):
        store.load("ghost", "templated")


def test_corrupt_files_raise_typed_errors(store: PersonaVectorStore) -> None:
    path = store.save("a", "templated", vec(0), name="A", sample_ids=["q"])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match=str(path.name)):
        store.load("a", "templated")
    store.manifest_path("templated").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        store.list_personas(["templated"])


def test_reads_a_persona_vectors_06_tree(tmp_path: Path) -> None:
    """A tree exactly as persona-vectors 0.6.x writes it: minimal manifest, torch save_file."""
    folder = tmp_path / "meta-llama__Llama-3.1-8B-Instruct" / "answer_mean"
    for variant in ("templated", "biography"):
        (folder / variant).mkdir(parents=True)
        personas = {}
        for i, pid in enumerate(["chef", "pilot", BASELINE_PERSONA_ID]):
            save_file(
                {"activations": torch.from_numpy(vec(i))},
                str(folder / variant / f"{pid}.safetensors"),
            )
            personas[pid] = {"name": pid.title(), "sample_ids": [f"{pid}-1"]}
        (folder / variant / "manifest.json").write_text(
            json.dumps({"num_layers": L, "hidden_size": H, "personas": personas}, indent=2)
        )
    store = PersonaVectorStore("meta-llama/Llama-3.1-8B-Instruct", root_dir=tmp_path)
    assert store.list_personas() == ["chef", "pilot"]
    np.testing.assert_array_equal(store.load("pilot", "biography"), vec(1))
    assert store.has("chef", "templated", ["chef-1"])
    dataset = load_analysis_dataset(store, ["templated", "biography"])
    assert dataset.persona_ids == ["chef", "pilot"] and dataset.names == ["Chef", "Pilot"]
    assert dataset.layers == list(range(L))
    np.testing.assert_array_equal(dataset.samples("templated"), np.stack([vec(0), vec(1)]))
    np.testing.assert_array_equal(
        dataset.samples("biography", layers=[2]), np.stack([vec(0), vec(1)])[:, [2]]
    )
    # Adding a vector upgrades the manifest in place and keeps the old entries.
    store.save("diver", "templated", vec(5), name="Diver", sample_ids=["d"])
    manifest = json.loads((folder / "templated" / "manifest.json").read_text())
    assert set(manifest["personas"]) == {"chef", "pilot", BASELINE_PERSONA_ID, "diver"}
    assert manifest["personas"]["chef"] == {"name": "Chef", "sample_ids": ["chef-1"]}
    assert manifest["format"] == "pvrs.persona_vectors"


def test_written_tree_is_readable_by_the_06_reader(store: PersonaVectorStore) -> None:
    """What the 0.6.x reader does: manifest personas + safetensors torch load_file."""
    from safetensors.torch import load_file as torch_load

    store.save("a", "templated", vec(0), name="A", sample_ids=["q"])
    manifest = json.loads(store.manifest_path("templated").read_text())
    assert isinstance(manifest["personas"]["a"], dict) and manifest["num_layers"] == L
    t = torch_load(str(store.variant_dir("templated") / "a.safetensors"))["activations"]
    assert t.ndim == 2 and torch.equal(t, torch.from_numpy(vec(0)))


def test_samples_roundtrip(store: PersonaVectorStore) -> None:
    arr = vec(0, (3, L, H))
    path = store.save_samples("chef", "templated", torch.from_numpy(arr), ["s1", "s2", "日本"])
    assert path.parent.name == "samples"
    out, ids = store.load_samples("chef", "templated")
    np.testing.assert_array_equal(out, arr)
    assert ids == ["s1", "s2", "日本"]
    with pytest.raises(InvalidArgumentError, match="3 vectors but 2 sample ids"):
        store.save_samples("chef", "templated", arr, ["s1", "s2"])
    with pytest.raises(VectorNotFoundError):
        store.load_samples("ghost", "templated")


def test_mean_and_stack(store: PersonaVectorStore) -> None:
    store.save_many("templated", [VectorRecord(f"p{i}", vec(i), f"P{i}", ["q"]) for i in range(5)])
    store.save(BASELINE_PERSONA_ID, "templated", vec(99), name="B", sample_ids=["q"])
    expected = np.stack([vec(i) for i in range(5)]).astype(np.float64).mean(0)
    np.testing.assert_allclose(store.mean("templated"), expected, rtol=1e-6)
    stacked = store.stack(["p1", "p3"], "templated", layers=[3, 0])
    np.testing.assert_array_equal(stacked, np.stack([vec(1), vec(3)])[:, [3, 0]])


def test_analysis_dataset_errors(store: PersonaVectorStore) -> None:
    with pytest.raises(ArtifactError, match="no persona vectors"):
        load_analysis_dataset(store)
    store.save("a", "templated", vec(0), name="A", sample_ids=["q"])
    with pytest.raises(VectorNotFoundError, match="ghost"):
        load_analysis_dataset(store, ["templated"], persona_ids=["ghost"])
    ds = load_analysis_dataset(store)
    assert ds.variants == ("templated",) and len(ds) == 1
    with pytest.raises(InvalidArgumentError, match="biography"):
        ds.samples("biography")


# Writers are separate Python processes that import only pvrs.store (not this test module,
# which imports torch), so the test measures the store, not interpreter start-up.
WRITER = """
import sys
import numpy as np
from pvrs.store import PersonaVectorStore, VectorRecord
root, prefix, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
store = PersonaVectorStore("org/tiny-model", root_dir=root)
vec = lambda i: np.random.default_rng(i).standard_normal((4, 8)).astype(np.float32)
if mode == "batch":
    store.save_many("templated", [VectorRecord(f"{prefix}{i}", vec(i), prefix, ["q"]) for i in range(n)])
elif mode == "single":
    for i in range(n):
        store.save(f"{prefix}{i}", "templated", vec(i), name=prefix, sample_ids=["q"])
else:  # crash: die after writing the temp file, before the rename
    import os
    os.replace = lambda src, dst: os._exit(3)
    store.save("victim", "templated", vec(7), name="V", sample_ids=["q"])
"""


def writer(root: Path, prefix: str, n: int, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), prefix, str(n), mode], env=env
    )


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_concurrent_processes_lose_nothing(tmp_path: Path, mode: str) -> None:
    n = 25
    procs = [writer(tmp_path, prefix, n, mode) for prefix in ("x", "y", "z")]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    store = PersonaVectorStore(MODEL, root_dir=tmp_path)
    assert len(store.list_personas(["templated"])) == 3 * n
    for pid in ("x0", "y24", "z13"):
        np.testing.assert_array_equal(store.load(pid, "templated"), vec(int(pid[1:])))
    leftovers = [p for p in store.variant_dir("templated").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_killed_writer_leaves_the_previous_state(tmp_path: Path) -> None:
    store = PersonaVectorStore(MODEL, root_dir=tmp_path)
    store.save("victim", "templated", vec(0), name="V", sample_ids=["q"])
    before = store.manifest_path("templated").read_bytes()
    assert writer(tmp_path, "", 0, "crash").wait(60) == 3
    assert store.manifest_path("templated").read_bytes() == before
    np.testing.assert_array_equal(store.load("victim", "templated"), vec(0))
    # The lock was released by the dying process, so the next writer is not blocked.
    store.save("next", "templated", vec(1), name="N", sample_ids=["q"])
    assert store.list_personas(["templated"]) == ["next", "victim"]


def test_a_failing_save_never_leaves_an_entry_describing_another_vector(tmp_path: Path) -> None:
    from pvrs.errors import InvalidArgumentError
    from pvrs.store.validation import validate

    store = PersonaVectorStore("org/m", root_dir=tmp_path)
    old, new = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
    store.save("a", "templated", old, name="A", sample_ids=["q1"])
    # Bad text in another record: refused before anything is written.
    with pytest.raises(InvalidArgumentError, match="not valid text"):
        store.save_many("templated", [VectorRecord("a", new, "A", ["q2"]), VectorRecord("b", new, "B\ud800", ["q1"])])
    np.testing.assert_array_equal(store.load("a", "templated"), old)
    assert store.has("a", "templated", ["q1"])
    # A write that fails half way: "a" is rewritten but no longer recorded, so resume redoes it.
    (store.variant_dir("templated") / "c.safetensors").mkdir()
    with pytest.raises(OSError):
        store.save_many("templated", [VectorRecord("a", new, "A", ["q2"]), VectorRecord("c", new, "C", ["q1"])])
    assert not store.has("a", "templated")
    assert not [p for p in validate(store.root_dir, deep=True).problems if p.kind == "sha256_mismatch"]
