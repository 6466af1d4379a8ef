"""`--source`: one rule for where every reading command finds persona vectors."""

from __future__ import annotations

import pytest
from pvrs.errors import InputError
from pvrs.hub.vector_sources import local_store_root, open_store
from pvrs.store import PersonaVectorStore

MODEL = "org/tiny"


def test_local_folders(tmp_path):
    assert local_store_root(None) is None
    assert local_store_root(tmp_path) == tmp_path
    (tmp_path / "activations").mkdir()
    assert local_store_root(tmp_path) == tmp_path / "activations"  # an artifacts folder
    store = open_store(MODEL, tmp_path, "answer_mean")
    assert isinstance(store, PersonaVectorStore)
    assert store.root_dir == tmp_path / "activations"


def test_packaged_folders_are_told_apart_from_stores(tmp_path):
    import numpy as np
    from pvrs import hub

    project = tmp_path / "project"  # an artifacts folder beside a README
    (project / "activations").mkdir(parents=True)
    (project / "README.md").write_text("# my project\n")
    assert isinstance(open_store(MODEL, project, "answer_mean"), PersonaVectorStore)
    store_root = tmp_path / "store"
    PersonaVectorStore(MODEL, root_dir=store_root).save(
        "pirate", "templated", np.ones((2, 3), np.float32), name="Pirate", sample_ids=["q1"]
    )
    assert isinstance(open_store(MODEL, store_root, "answer_mean"), PersonaVectorStore)
    packaged = tmp_path / "packaged"
    hub.package(MODEL, packaged, root_dir=store_root, progress=False)
    store = open_store(MODEL, packaged, "answer_mean")
    assert isinstance(store, hub.HFPersonaVectorStore)
    assert store.list_personas(["templated"]) == ["pirate"]
    np.testing.assert_array_equal(store.load("pirate", "templated"), np.ones((2, 3), np.float32))


def test_bad_sources_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a Hub dataset id"):
        open_store(MODEL, str(tmp_path / "missing" / "x" / "y"), "answer_mean")
    with pytest.raises(InputError, match="no such folder"):
        local_store_root(tmp_path / "missing")


def test_push_names_a_packaged_folder_as_such(tmp_path, capsys):
    import numpy as np
    from pvrs import hub
    from pvrs.cli import main

    store_root = tmp_path / "store"
    PersonaVectorStore(MODEL, root_dir=store_root).save(
        "pirate", "templated", np.ones((2, 3), np.float32), name="Pirate", sample_ids=["q1"]
    )
    packaged = tmp_path / "packaged"
    hub.package(MODEL, packaged, root_dir=store_root, progress=False)
    # `push` publishes a local store; a packaged folder is not one (README: local stores only).
    assert main(["push", "--model", MODEL, "--source", str(packaged), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a packaged dataset" in err[0] and "pass the store" in err[0], err
