"""`--source`: one rule for where every reading command finds persona vectors."""

from __future__ import annotations

import pytest
from pvrs.errors import InputError
from pvrs.sources import local_store_root, open_store
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


def test_bad_sources_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a Hub dataset id"):
        open_store(MODEL, str(tmp_path / "missing" / "x" / "y"), "answer_mean")
    with pytest.raises(InputError, match="no such folder"):
        local_store_root(tmp_path / "missing")
