"""`--source`: one rule for where every reading command finds persona vectors."""

from __future__ import annotations

import pytest
from pvrs.errors import InputError
from pvrs.store import PersonaVectorStore
from pvrs.store.sources import local_store_root, open_store

MODEL = "org/tiny"


def test_local_folders(tmp_path):
    assert local_store_root(None) is None
    assert local_store_root(tmp_path) == tmp_path
    (tmp_path / "activations").mkdir()
    assert local_store_root(tmp_path) == tmp_path / "activations"  # an artifacts folder
    store = open_store(MODEL, tmp_path, "answer_mean")
    assert isinstance(store, PersonaVectorStore)
    assert store.root_dir == tmp_path / "activations"


def test_packaged_folders_are_told_apart_from_stores(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(
        sys.modules, "pvrs.hub.reading", types.SimpleNamespace(HFPersonaVectorStore=lambda *a, **k: "hub")
    )
    project = tmp_path / "project"  # an artifacts folder beside a README
    (project / "activations").mkdir(parents=True)
    (project / "README.md").write_text("# my project\n")
    assert isinstance(open_store(MODEL, project, "answer_mean"), PersonaVectorStore)
    packaged = tmp_path / "packaged"
    (packaged / "org__tiny__answer_mean").mkdir(parents=True)
    (packaged / "org__tiny__answer_mean" / "templated-00000-of-00001.parquet").write_bytes(b"")
    assert open_store(MODEL, packaged, "answer_mean") == "hub"
    store = tmp_path / "store" / "org__tiny" / "answer_mean" / "templated"
    store.mkdir(parents=True)
    (store / "manifest.json").write_text("{}")
    assert isinstance(open_store(MODEL, tmp_path / "store", "answer_mean"), PersonaVectorStore)


def test_bad_sources_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a Hub dataset id"):
        open_store(MODEL, str(tmp_path / "missing" / "x" / "y"), "answer_mean")
    with pytest.raises(InputError, match="no such folder"):
        local_store_root(tmp_path / "missing")
