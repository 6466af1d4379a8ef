"""`pvrs trait`: persona_vectors trait files parse; a run on a tiny model judged by a real HTTP
server keeps the pairs past the thresholds, saves the three difference vectors (checked
against per-conversation computations) and an eval table, and a rerun redoes nothing."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pvrs.cli import main
from pvrs.errors import InputError
from pvrs.judge.cache import default_cache_path
from pvrs.judge.trait import load_trait_file

from tests.judge_server import Server, server_fixture  # noqa: F401 (the `server` fixture)
from tests.test_eval import tiny_folder  # noqa: F401 (the `tiny_folder` fixture)

FIXTURE = Path(__file__).parent / "data" / "traits" / "pirate.json"


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_has_its_own_judge_cache(run: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever $PVRS_CACHE_DIR the caller set, judge scores cached by one test are not
    another's (two tests sharing `judge-scores.jsonl` judged nothing and failed)."""
    cache = default_cache_path(Path("scores.jsonl"))
    assert cache.parent.resolve().is_relative_to(tmp_path_factory.getbasetemp().resolve())
    assert not cache.exists()
    cache.write_text("")


def test_trait_file_in_the_persona_vectors_format_parses() -> None:
    trait = load_trait_file(FIXTURE)
    assert (trait.name, len(trait.instructions), len(trait.questions)) == ("pirate", 2, 3)
    assert trait.system_prompt("pos", 1) == "You are a pirate assistant. Answer as a salty sea pirate would, with pirate words throughout."
    assert trait.system_prompt("neg", 0) == "You are a helpful assistant. Speak in plain, modern standard English with no nautical slang."
    assert load_trait_file(FIXTURE, "evil").system_prompt("pos", 0).startswith("You are an evil assistant. ")
    assert [p.id for p in trait.personas()] == ["pos_0", "neg_0", "pos_1", "neg_1"]
    prompt = trait.rubric.render("Q?", "A.")
    assert "[QUESTION START]\nQ?\n[QUESTION END]" in prompt and "[ANSWER START]\nA.\n[ANSWER END]" in prompt


@pytest.mark.parametrize(
    "content,message",
    [
        ("not json", "not JSON"),
        ('{"questions": ["q"], "eval_prompt": "{question} {answer}"}', "'instruction' must be a non-empty list of {pos, neg}"),
        ('{"instruction": [{"pos": "a"}], "questions": ["q"], "eval_prompt": "{question} {answer}"}', "'instruction' must be"),
        ('{"instruction": [{"pos": "a", "neg": "b"}], "questions": [], "eval_prompt": "{question} {answer}"}', "'questions' must be"),
        ('{"instruction": [{"pos": "a", "neg": "b"}], "questions": ["q"], "eval_prompt": "{question}"}', "no {answer} placeholder"),
    ],
)
def test_bad_trait_files_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_trait_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _answer(prompt: str) -> str:
    match = re.search(r"\[ANSWER START\]\n(.*)\n\[ANSWER END\]", prompt, re.S)
    assert match is not None
    return match[1]


def _argv(server: Server, tmp_path: Path, *extra: str) -> list[str]:
    return ["trait", str(FIXTURE), "--model", str(tmp_path / "model"), "--device", "cpu", "--samples", "2",
            "--max-new-tokens", "4", "--judge-url", server.url, "--judge-model", "m", "--output-dir", str(tmp_path / "out"),
            "--layer", "1", "--alpha", "0", "2", "--no-png", *extra]


def _planted_scorer(out: Path) -> object:
    """Positive answers score 90 for the trait, negative ones 10, except question 0 whose
    negative answers score 80 (so its pairs are dropped); coherence 100 (60 under
    instruction 1's negative answers to question 2: still kept). The eval's steered
    answers (never in answers/) score 50."""
    def side(answer: str) -> list[tuple[str, str]]:
        found = []
        for path in (out / "answers").glob("*.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["answer"] == answer:
                    found.append((path.stem, row["qid"]))
        return found

    def score(prompt: str) -> float:
        where = side(_answer(prompt))
        if not where:
            return 50.0
        persona, qid = where[0]
        if "**pirate**" not in prompt:
            return 60.0 if (persona, qid[:2]) == ("neg_1", "q2") else 100.0
        if persona.startswith("pos"):
            return 90.0
        return 80.0 if qid.startswith("q0") else 10.0
    return score


def test_trait_end_to_end_on_a_tiny_model(server: Server, tiny_folder: Path, tmp_path: Path,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    server.scorer = _planted_scorer(out)  # type: ignore[assignment]
    assert main(_argv(server, tmp_path)) == 0
    trait = load_trait_file(FIXTURE)

    # Every intermediate is saved: answers, scores, pairs, kept rows, vectors, eval, summary.
    assert sorted(p.name for p in (out / "answers").glob("*.jsonl")) == ["neg_0.jsonl", "neg_1.jsonl", "pos_0.jsonl", "pos_1.jsonl"]
    trait_scores = [json.loads(line) for line in (out / "scores" / "trait.jsonl").read_text().splitlines()]
    assert len(trait_scores) == 24 and {r["rubric"] for r in trait_scores} == {"trait"}
    with (out / "pairs.csv").open() as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 12
    for p in pairs:
        passes = (float(p["pos_trait"]) >= 50 and float(p["neg_trait"]) < 50
                  and min(float(p["pos_coherence"]), float(p["neg_coherence"])) >= 50)
        assert int(p["kept"]) == passes
    kept = [p for p in pairs if p["kept"] == "1"]
    # Answers that happen to coincide across sides may move a pair; the plan keeps q1 and q2.
    assert 0 < len(kept) < 12 and all(not p["qid"].startswith("q0") or p["neg_trait"] != "80.0" for p in kept)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == len(kept) and summary["thresholds"] == {"min_trait_pos": 50, "max_trait_neg": 50, "min_coherence": 50}
    assert set(summary["eval"]) == {"response_mean"}
    with (out / "eval" / "response_mean" / "results.csv").open() as f:
        assert [(r["kind"], r["alpha"]) for r in csv.DictReader(f)] == [
            ("unsteered", ""), ("prompted", ""), ("steered", "0"), ("steered", "2")]

    _check_vectors(tmp_path / "model", out, trait)

    # A rerun generates nothing and asks the judge nothing.
    import pvrs.extraction.generate as generate

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("saved answers must not be generated again")

    monkeypatch.setattr(generate, "generate_answers", refuse)
    monkeypatch.setattr(generate, "generate", refuse)
    asked = len(server.requests)
    assert main(_argv(server, tmp_path)) == 0
    assert len(server.requests) == asked
    assert json.loads((out / "eval" / "response_mean" / "summary.json").read_text())["cells_resumed"] == 4


def test_trait_drops_pairs_the_judge_could_not_score(server: Server, tiny_folder: Path, tmp_path: Path,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The trait judge answers REFUSAL for neg_1's answer to q1_s0: its pair (and any pair
    sharing that answer text) is dropped with the reason in pairs.csv, the others are judged
    as planted, and the run goes on."""
    out = tmp_path / "out"
    planted = _planted_scorer(out)

    def refusing(prompt: str) -> float | None:
        rows = [json.loads(line) for line in (out / "answers" / "neg_1.jsonl").read_text().splitlines()]
        refused = next(r["answer"] for r in rows if r["qid"] == "q1_s0")
        return None if "**pirate**" in prompt and _answer(prompt) == refused else planted(prompt)  # type: ignore[operator]

    server.scorer = refusing
    assert main([*_argv(server, tmp_path), "--no-eval"]) == 0
    with (out / "pairs.csv").open() as f:
        pairs = list(csv.DictReader(f))
    unscored = [p for p in pairs if "" in (p["pos_trait"], p["neg_trait"], p["pos_coherence"], p["neg_coherence"])]
    assert any((p["instruction"], p["qid"]) == ("1", "q1_s0") for p in unscored)
    assert all(p["kept"] == "0" and p["reason"].startswith("no score: ") and "trait" in p["reason"] for p in unscored)
    kept = [p for p in pairs if p["kept"] == "1"]
    assert kept and all(p["reason"] == "" and "" not in (p["pos_trait"], p["neg_trait"]) for p in kept)
    dropped = [p for p in pairs if p["kept"] == "0" and p not in unscored]
    assert all(p["reason"] and not p["reason"].startswith("no score") for p in dropped)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unscored_pairs"] == len(unscored) and summary["kept"] == len(kept)
    assert "answers could not be scored (REFUSAL or no number)" in " ".join(capsys.readouterr().err.split())
    trait_rows = [json.loads(line) for line in (out / "scores" / "trait.jsonl").read_text().splitlines()]
    assert len(trait_rows) < 24 and all(r["score"] is not None for r in trait_rows)  # no row for an unscored answer


def _check_vectors(folder: Path, out: Path, trait: object) -> None:
    """response_mean and prompt_last equal `pvrs contrast`'s computation on the kept rows;
    prompt_mean equals each conversation's prompt tokens averaged by hand."""
    import torch
    from pvrs.engines.models import load
    from pvrs.extraction.chat import prepare_inputs
    from pvrs.extraction.masks import MaskStrategy
    from pvrs.steering.contrast import load_responses, mean_activations
    from safetensors.numpy import load_file

    model, tokenizer = load(str(folder), device="cpu")
    vectors = {k: load_file(out / "vectors" / f"{k}.safetensors")["activations"] for k in ("response_mean", "prompt_mean", "prompt_last")}
    pos, neg = (load_responses(out / "kept" / f"{side}.jsonl") for side in ("pos", "neg"))
    for kind, strategy in (("response_mean", "answer_mean"), ("prompt_last", "answer_previous")):
        expected = mean_activations(model, tokenizer, pos, strategy) - mean_activations(model, tokenizer, neg, strategy)
        np.testing.assert_allclose(vectors[kind], expected, atol=1e-4)

    def prompt_means(rows: list) -> np.ndarray:
        per = []
        for r in rows:
            [prepared] = prepare_inputs(tokenizer, [(r.sample_id, r.question, r.answer)], system_prompt=r.system,
                                        strategies=[MaskStrategy.ANSWER_FIRST])
            first = int(np.flatnonzero(prepared.token_masks[MaskStrategy.ANSWER_FIRST])[0])
            with torch.inference_mode():
                states = model(torch.from_numpy(np.asarray(prepared.input_ids))[None], output_hidden_states=True).hidden_states
            # hidden_states[i + 1] is block i's output; the last one has the final norm applied.
            per.append(np.stack([s[0, :first].float().mean(0).numpy() for s in states[1:-1]]))
        return np.mean(per, axis=0)

    expected = prompt_means(pos) - prompt_means(neg)
    np.testing.assert_allclose(vectors["prompt_mean"][:-1], expected, atol=1e-4)


def test_trait_errors_are_one_line(server: Server, tiny_folder: Path, tmp_path: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def lines() -> list[str]:
        return capsys.readouterr().err.strip().splitlines()

    argv = _argv(server, tmp_path)
    assert main([argv[0], str(tmp_path / "missing.json"), *argv[2:]]) == 2
    assert lines() == [f"pvrs trait: error: trait file {tmp_path / 'missing.json'}: cannot read (No such file or directory)"]
    no_grid = [*argv[: argv.index("--layer")], "--no-png"]
    assert main(no_grid) == 2
    assert lines() == ["pvrs trait: error: nothing to evaluate: pass --layer and --alpha (steering), --cap and --tau (capping), or both"]
    assert main([*argv, "--layer", "9"]) == 2  # the tiny model has 4 blocks
    assert lines()[-1] == "pvrs trait: error: --layer '9': layer 9 does not exist (0..3)"
    assert main([*argv, "--cache", str(tmp_path)]) == 2
    assert lines() == [f"pvrs trait: error: --cache {str(tmp_path)!r} is a folder; pass a file path"]
    assert not server.requests and not (tmp_path / "out" / "answers").exists()  # all fail before any judge or generation work
    server.scorer = lambda prompt: 100.0  # negative answers show the trait too: no pair passes
    assert main(argv) == 2
    err = [line for line in lines() if line.strip() and "Loading weights" not in line]  # transformers' own bar
    assert len(err) == 1, err
    assert err[0].startswith("pvrs trait: error: no pair passed the thresholds; lower --min-trait-pos")
    assert (tmp_path / "out" / "pairs.csv").is_file()  # what was judged is kept


def test_eval_questions_from_a_trait_file_or_a_questions_file(tmp_path: Path) -> None:
    import argparse

    from pvrs.cli.trait import _eval_questions

    trait = load_trait_file(FIXTURE)
    held_out = tmp_path / "eval.json"
    held_out.write_text(json.dumps({"instruction": [{"pos": "a", "neg": "b"}], "questions": ["Held out?"],
                                    "eval_prompt": "{question} {answer}"}))
    lines = tmp_path / "q.txt"
    lines.write_text("One?\nTwo?\n")
    assert _eval_questions(argparse.Namespace(eval_questions=None), trait) == trait.questions
    assert _eval_questions(argparse.Namespace(eval_questions=str(held_out)), trait) == ["Held out?"]
    assert _eval_questions(argparse.Namespace(eval_questions=str(lines)), trait) == ["One?", "Two?"]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match=r"^--eval-questions .*empty.txt holds no prompts$"):
        _eval_questions(argparse.Namespace(eval_questions=str(tmp_path / "empty.txt")), trait)
    # The obvious JSON, questions alone, is read as the trait file's questions are.
    plain = tmp_path / "questions.json"
    plain.write_text(json.dumps({"questions": ["First?", "Second?"]}))
    assert _eval_questions(argparse.Namespace(eval_questions=str(plain)), trait) == ["First?", "Second?"]
    plain.write_text(json.dumps({"questions": ["First?", 2]}))
    with pytest.raises(InputError, match=r"^--eval-questions .*questions.json: 'questions' must be a non-empty list of strings$"):
        _eval_questions(argparse.Namespace(eval_questions=str(plain)), trait)


def test_default_output_dir_stays_under_the_artifacts_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--name is the user's text: `..` in it must not lead the run's files out of traits/."""
    import argparse

    from pvrs.cli.trait import _output_dir

    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path))
    args = argparse.Namespace(output_dir=None, model=str(tmp_path / "model"))
    for name in ("../../../escaped", "..", "a/../../b"):
        out = _output_dir(args, load_trait_file(FIXTURE, name).name).resolve()
        assert out.is_relative_to((tmp_path / "traits").resolve()) and out.parent != (tmp_path / "traits").resolve(), out
    assert _output_dir(args, load_trait_file(FIXTURE).name).name == "pirate"


def test_persona_vectors_preset_samples_as_its_pipeline_does(capsys: pytest.CaptureFixture[str]) -> None:
    """persona_vectors samples trait answers with top_p 1 and up to 1,000 new tokens
    (eval_persona.py), pvrs by default with top_p 0.9 and 256; the preset takes its values,
    and a flag that contradicts it is one line, before any model loads."""
    from pvrs.cli import build_parser
    from pvrs.cli.trait import trait_sampling

    argv = ["trait", str(FIXTURE), "--no-eval"]
    default = trait_sampling(build_parser().parse_args(argv))
    assert (default.top_p, default.max_new_tokens, default.temperature) == (0.9, 256, 1.0)
    preset = trait_sampling(build_parser().parse_args([*argv, "--preset", "persona_vectors"]))
    assert (preset.top_p, preset.max_new_tokens, preset.temperature) == (1.0, 1000, 1.0)
    once = trait_sampling(build_parser().parse_args([*argv, "--preset", "persona_vectors", "--samples", "1"]))
    assert once.temperature == 0.0  # as there: one answer per question is greedy
    with pytest.raises(InputError, match=r"--preset persona_vectors samples with --top-p 1; drop --top-p 0.5 or the preset"):
        trait_sampling(build_parser().parse_args([*argv, "--preset", "persona_vectors", "--top-p", "0.5"]))
    assert main([*argv, "--preset", "persona_vectors", "--max-new-tokens", "64", "--judge-url", "http://127.0.0.1:9/v1",
                 "--judge-model", "m"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "pvrs trait: error: --preset persona_vectors samples with --max-new-tokens 1000; drop --max-new-tokens 64 or the preset"]
