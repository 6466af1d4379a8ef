from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _converted_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the built-in model's converted copy, shared by the session's tests:
    converting the GGUF takes a while."""
    return tmp_path_factory.mktemp("converted-models")


@pytest.fixture(autouse=True)
def _isolated_artifacts(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, _converted_models: Path
) -> None:
    """Every test writes artifacts and caches (judge scores, ...) to its own temporary trees,
    never to ./artifacts or the caller's $PVRS_CACHE_DIR; only the converted built-in model
    (`<cache>/models`) is shared."""
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path_factory.mktemp("artifacts")))
    cache = tmp_path_factory.mktemp("cache")
    (cache / "models").symlink_to(_converted_models, target_is_directory=True)
    monkeypatch.setenv("PVRS_CACHE_DIR", str(cache))
