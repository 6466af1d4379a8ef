"""pvrs.compat.persona_vectors: a script written for the reference tool's store API runs on
a pvrs store (argument order, torch return type, per-call mask strategy, warnings)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pvrs.compat.persona_vectors import (
    PersonaVectorStore,
    activation_config_name,
    model_dir_name,
    normalize_mask_strategy,
)
from pvrs.extraction.masks import MaskStrategy
from pvrs.store import PersonaVectorStore as PvrsStore

MODEL, L, H = "org/tiny-model", 3, 8


def test_reference_surface_over_a_pvrs_store(tmp_path):
    rng = np.random.default_rng(0)
    ref = PersonaVectorStore(MODEL, root_dir=tmp_path)
    vectors = {pid: rng.standard_normal((L, H)).astype(np.float32) for pid in ("a", "b", "baseline_assistant")}
    for pid, v in vectors.items():  # the reference's order: variant first, then persona
        ref.save("templated", pid, pid.upper(), torch.from_numpy(v), [f"{pid}-q1", f"{pid}-q2"])
    ref.save("biography", "a", "A", torch.from_numpy(vectors["a"] * 2), ["a-q1"])
    loaded = ref.load("templated", "a")
    assert isinstance(loaded, torch.Tensor) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, torch.from_numpy(vectors["a"]))
    # The same files, read by pvrs's own store (persona first, numpy).
    np.testing.assert_array_equal(PvrsStore(MODEL, root_dir=tmp_path).load("a", "biography"), vectors["a"] * 2)
    assert ref.list_personas(["templated"]) == ["a", "b"]
    assert ref.list_personas(["templated"], include_baseline=True) == ["a", "b", "baseline_assistant"]
    with pytest.warns(UserWarning, match="Skipping 2 persona"):
        assert ref.list_personas() == ["a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ref.list_personas(warn_missing=False) == ["a"]
    assert ref.persona_sample_ids("templated", "b") == ["b-q1", "b-q2"]
    assert ref.persona_sample_ids("templated", "nobody") is None
    assert ref.persona_sample_ids("biography", "a", mask_strategy="answer_last") is None
    assert ref.persona_names(["a", "b"]) == {"a": "A", "b": "B"}
    assert ref.list_layers(["templated"]) == [0, 1, 2]
    assert ref.available_variants() == ["templated", "biography"]
    with pytest.raises(FileNotFoundError, match="'nobody'"):
        ref.load("templated", "nobody")
    # A per-call mask strategy reads and writes another strategy's folder.
    ref.save("templated", "a", "A", torch.zeros(L, H), ["q"], mask_strategy=MaskStrategy.ANSWER_LAST)
    assert ref.load("templated", "a", mask_strategy="answer_last").abs().sum() == 0
    assert ref.list_personas(["templated"], mask_strategy="answer_last") == ["a"]
    assert (tmp_path / "org__tiny-model" / "answer_last" / "templated" / "a.safetensors").is_file()


def test_config_and_folder_names():
    assert activation_config_name("org/m") == "org__m__answer_mean"
    assert activation_config_name("org/m", MaskStrategy.ANSWER_LAST) == "org__m__answer_last"
    assert model_dir_name("org/m") == "org__m"
    assert normalize_mask_strategy(None) == "answer_mean"


def test_the_reference_smoke_test_runs_on_pvrs(tmp_path):
    """persona-vectors' tests/smoke_test.py::test_smoke (main), its imports changed to
    pvrs.compat. One assertion differs by design: pvrs's manifest entry holds the reference's
    `name` and `sample_ids` plus provenance (n_samples, created_at, sha256, ...)."""
    import json

    from pvrs.compat.persona_vectors import DEFAULT_MASK_STRATEGY, discover_activation_models

    store = PersonaVectorStore("test/model", root_dir=tmp_path, mask_strategy="answer_previous")
    vectors = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 8)
    sample_ids = ["q0", "q1", "q2"]
    saved_dir = store.save("templated", "persona-001", "Test Persona", vectors, sample_ids)
    expected_dir = store.root_dir / "test__model" / "answer_previous" / "templated"
    assert saved_dir == expected_dir
    assert (expected_dir / "manifest.json").exists()
    assert (expected_dir / "persona-001.safetensors").exists()
    manifest = json.loads((saved_dir / "manifest.json").read_text())
    entry = manifest["personas"]["persona-001"]
    assert {k: entry[k] for k in ("name", "sample_ids")} == {"name": "Test Persona", "sample_ids": sample_ids}
    assert torch.allclose(store.load("templated", "persona-001"), vectors)
    assert store.list_personas(["templated"]) == ["persona-001"]
    assert store.list_personas([]) == []
    assert store.available_variants(["templated", "biography"]) == ["templated"]
    assert store.available_variants([]) == []
    assert store.persona_names(["persona-001"], variants=["templated"]) == {"persona-001": "Test Persona"}
    assert store.list_layers(["templated"], ["persona-001"]) == [0, 1, 2, 3]
    assert discover_activation_models(tmp_path, "answer_previous") == ["test/model"]
    assert discover_activation_models(tmp_path, "answer_mean") == []
    assert DEFAULT_MASK_STRATEGY == "answer_mean"
    assert model_dir_name("org/model") == "org__model"


def test_reference_hub_store_over_a_packaged_dataset(tmp_path):
    """`HFPersonaVectorStore(repo_id, model_name, mask_strategy)` with the reference's
    argument order, torch tensors, default variants (every split) and its refusal of another
    mask strategy, over pvrs's own Hub reader."""
    from pvrs import hub
    from pvrs.compat.persona_vectors import HFPersonaVectorStore

    rng = np.random.default_rng(1)
    local = PvrsStore(MODEL, root_dir=tmp_path / "store")
    vectors = {pid: rng.standard_normal((L, H)).astype(np.float32) for pid in ("a", "b", "baseline_assistant")}
    for pid, v in vectors.items():
        local.save(pid, "templated", v, name=pid.upper(), sample_ids=[f"{pid}-q"])
    local.save("a", "biography", vectors["a"] * 2, name="A", sample_ids=["a-q"])
    hub.package(MODEL, tmp_path / "out", root_dir=tmp_path / "store", progress=False)

    remote = HFPersonaVectorStore(str(tmp_path / "out"), MODEL, mask_strategy="answer_mean")
    assert remote.repo_id == str(tmp_path / "out") and remote.config_name == "org__tiny-model__answer_mean"
    loaded = remote.load("biography", "a")
    assert isinstance(loaded, torch.Tensor) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, torch.from_numpy(vectors["a"] * 2))
    assert remote.available_variants() == ["biography", "templated"]
    assert remote.list_personas(["templated"]) == ["a", "b"]
    assert remote.list_personas(["templated"], include_baseline=True) == ["a", "b", "baseline_assistant"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference's Hub store does not warn by default
        assert remote.list_personas() == ["a"]
    with pytest.warns(UserWarning, match="Skipping 2 persona"):
        remote.list_personas(warn_missing=True)
    assert remote.persona_names(["a", "b"], variants=["templated"]) == {"a": "A", "b": "B"}
    assert remote.list_layers(["templated"], ["a"]) == [0, 1, 2]
    assert remote.list_personas(["templated"], mask_strategy="answer_mean") == ["a", "b"]
    with pytest.raises(ValueError, match="bound to mask_strategy='answer_mean'"):
        remote.load("templated", "a", mask_strategy="answer_last")
    with pytest.raises(FileNotFoundError, match="'nobody'"):
        remote.load("templated", "nobody")
    remote.release_cache()
    torch.testing.assert_close(remote.load("templated", "b"), torch.from_numpy(vectors["b"]))


def _reference_trait_store(root):
    """A trait vector store as persona-vectors main writes it (artifacts.TraitVectorStore
    ._save_item: safetensors.torch.save_file of one `activations` tensor, and a manifest keyed
    `attributes` whose entries hold the contrast metadata of traits.save_trait_deltas)."""
    import json

    from safetensors.torch import save_file

    folder = root / "google__gemma-2-2b-it" / "persona_mean" / "templated"
    folder.mkdir(parents=True)
    deltas = {"sex": torch.randn(L, H, generator=torch.Generator().manual_seed(0)),
              "age": torch.randn(L, H, generator=torch.Generator().manual_seed(1))}
    entries = {}
    for name, delta in deltas.items():
        save_file({"activations": delta}, str(folder / f"{name}.safetensors"))
        entries[name] = {"positive": "female", "value_from": "male", "value_to": "female", "n_personas": 12,
                         "auc_by_layer": [0.5] * L, "act_norm_by_layer": [1.0] * L}
    manifest = {"num_layers": L, "hidden_size": H, "attributes": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder, deltas, entries


def test_a_trait_vector_store_of_persona_vectors_main_is_read(tmp_path):
    """persona-vectors main keeps trait vectors under trait_vectors/ with a manifest keyed
    `attributes`: pvrs's persona-vector readers name what it is and what reads it (they
    said "the manifest has no 'personas' mapping"); compat's TraitVectorStore reads it with
    the reference's methods, and its files are vectors `--vector` takes."""
    from pvrs.compat.persona_vectors import TraitVectorStore
    from pvrs.errors import ArtifactError, ManifestError
    from pvrs.steering.directions import load_vector

    root = tmp_path / "trait_vectors"
    folder, deltas, entries = _reference_trait_store(root)
    with pytest.raises(ManifestError, match=r"holds persona-vectors trait vectors .*compat.persona_vectors.TraitVectorStore") as caught:
        PvrsStore("google/gemma-2-2b-it", root_dir=root, mask_strategy="persona_mean").list_personas(["templated"])
    assert str(folder / "manifest.json") in str(caught.value) and "\n" not in str(caught.value)

    store = TraitVectorStore("google/gemma-2-2b-it", root_dir=root, mask_strategy="persona_mean")
    assert store.list_attributes() == ["age", "sex"]
    assert store.list_attributes(variant="biography") == []
    loaded = store.load("sex")
    assert isinstance(loaded, torch.Tensor) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, deltas["sex"])
    assert store.metadata("sex") == entries["sex"]
    assert store.list_layers(["templated"], ["age"]) == list(range(L))
    assert store.available_variants() == ["templated"]
    with pytest.raises(FileNotFoundError, match="'height'"):
        store.load("height")
    with pytest.raises(FileNotFoundError, match="'height'"):
        store.metadata("height")
    np.testing.assert_array_equal(load_vector(folder / "sex.safetensors", layer=1), deltas["sex"][1].numpy())

    (folder / "age.safetensors").unlink()
    (folder / "age.safetensors").symlink_to(folder / "sex.safetensors")  # another attribute's delta
    with pytest.raises(ArtifactError, match=r"age\.safetensors: a symbolic link"):
        store.load("age")
