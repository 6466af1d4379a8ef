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
