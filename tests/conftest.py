from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_artifacts(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test writes artifacts to its own temporary tree, never to ./artifacts."""
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path_factory.mktemp("artifacts")))
