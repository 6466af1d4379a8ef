"""`pvrs.judge` and `pvrs judge`: the endpoint backend against a real OpenAI-compatible HTTP
server started here (scores, concurrency, retries, timeouts, malformed replies), the local
backend, rubric files, the score cache, and the round trip into `pvrs extract --scores`."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pvrs
import pytest
from pvrs.cli import main
from pvrs.judge import Answer, ScoreCache, judge_answers, load_rubric, read_answers
from pvrs.judge.cache import cache_key
from pvrs.judge.endpoint import EndpointJudge
from pvrs.judge.numbers import stated_score, weighted_score

from tests.judge_server import Server, expected_score, server_fixture  # noqa: F401 (the `server` fixture)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def judge_for(server: Server, **options: object) -> EndpointJudge:
    return EndpointJudge(server.url, "judge-model", **{"backoff": 0.01, **options})  # type: ignore[arg-type]


ANSWERS = [Answer("pirate", f"q{i}", f"Question {i}?", f"Answer number {i}, arr.") for i in range(12)]


def test_endpoint_scores_in_order_within_the_concurrency_limit(server: Server) -> None:
    # Each request waits until three are in flight, so overlap does not depend on the box's
    # speed; a fourth at once would show in max_in_flight. The timeout only ends a hang.
    together = threading.Barrier(3, timeout=120)
    server.scorer = lambda prompt: (together.wait(), expected_score(prompt))[1]
    rubric = load_rubric("coherence")
    scores = judge_answers(judge_for(server, concurrency=3, api_key="sk-test"), rubric, ANSWERS)
    assert scores == [expected_score(rubric.render(a.question, a.answer)) for a in ANSWERS]
    assert server.max_in_flight == 3
    request = server.requests[0]
    assert request["model"] == "judge-model" and request["temperature"] == 0 and request["auth"] == "Bearer sk-test"


def test_endpoint_score_is_the_weighted_mean_over_number_logprobs(server: Server) -> None:
    server.mode = "logprobs"
    [score] = judge_for(server).score(["rate this"])
    assert score == pytest.approx(70.0)


@pytest.mark.parametrize("probability", [float("inf"), float("nan")])
def test_a_logprob_that_is_nan_or_inf_is_a_malformed_reply(server: Server, probability: float) -> None:
    """It would make the score NaN: cached, and written where `pvrs extract --scores` reads."""
    server.mode, server.top = "logprobs", [("80", probability), ("40", 0.25)]
    with pytest.raises(pvrs.JudgeError, match="malformed reply"):
        judge_for(server).score(["p"])


def test_no_logprobs_asks_for_the_stated_number(server: Server) -> None:
    server.mode = "logprobs"
    assert judge_for(server, logprobs=False).score(["p"]) == [0.0]  # the reply's content, "0"
    assert "logprobs" not in server.requests[0] and server.requests[0]["max_tokens"] == 4


def test_429_waits_for_retry_after(server: Server) -> None:
    server.fail_first, server.retry_after = 1, "1"
    assert judge_for(server).score(["p"]) == [expected_score("p")]
    assert len(server.requests) == 2 and server.times[1] - server.times[0] >= 0.95


def test_5xx_retried_with_backoff_then_one_error_naming_the_endpoint(server: Server) -> None:
    server.fail_first, server.fail_status = 99, 503
    with pytest.raises(pvrs.JudgeError, match=r"/v1/chat/completions: HTTP 503 after 3 attempts") as info:
        judge_for(server, retries=2, backoff=0.1).score(["p"])
    assert server.url in str(info.value) and len(server.requests) == 3
    gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.5  # exponential


@pytest.mark.parametrize("stop", ["failure", "ctrl-c"])
def test_a_failure_or_ctrl_c_ends_the_retry_waits_in_flight(server: Server, stop: str) -> None:
    """One request waits out a 30 s Retry-After while another fails (or Ctrl-C arrives): the
    run ends at once, not after the wait."""
    import time

    def interrupt(i: int, score: float | None) -> None:
        raise KeyboardInterrupt  # as Ctrl-C does on the calling thread, when the first score arrives

    server.fail_first, server.retry_after = 1, "30"
    server.mode = "garbage" if stop == "failure" else "number"
    started = time.monotonic()
    with pytest.raises(pvrs.JudgeError if stop == "failure" else KeyboardInterrupt):
        judge_for(server, concurrency=2).score(["a", "b"], None if stop == "failure" else interrupt)
    assert time.monotonic() - started < 5 and len(server.requests) == 2


def test_timeout_is_one_error(server: Server) -> None:
    server.delay = 1.0
    with pytest.raises(pvrs.JudgeError, match=r"no reply within 0.2s after 2 attempts"):
        judge_for(server, timeout=0.2, retries=1).score(["p"])


@pytest.mark.parametrize(
    "mode,match",
    [("garbage", "malformed reply, not an OpenAI chat completion: '<html>proxy error</html>'"),
     ("no_choices", "malformed reply, not an OpenAI chat completion: '{\"id\": \"x\"")],
)
def test_malformed_reply_is_one_error(server: Server, mode: str, match: str) -> None:
    server.mode = mode
    with pytest.raises(pvrs.JudgeError, match=match) as info:
        judge_for(server).score(["p"])
    assert f"judge endpoint {server.url}/chat/completions: " in str(info.value)


def test_refusal_or_words_is_no_score_and_the_run_continues(server: Server) -> None:
    rubric = load_rubric("coherence")
    refused = {rubric.render(a.question, a.answer) for a in ANSWERS[::3]}
    server.scorer = lambda prompt: None if prompt in refused else expected_score(prompt)  # None: the reply is REFUSAL
    scores = judge_answers(judge_for(server), rubric, ANSWERS)
    assert scores == [None if i % 3 == 0 else expected_score(rubric.render(a.question, a.answer)) for i, a in enumerate(ANSWERS)]
    assert len(server.requests) == len(ANSWERS)
    server.mode = "words"
    assert judge_for(server).score(["p"]) == [None]


def test_low_number_mass_is_no_score(server: Server) -> None:
    """persona_vectors' rule: under 0.25 of the top-logprob mass on the numbers, no score,
    even when the sampled token is a number."""
    server.mode = "logprobs"
    server.top = [("REF", 0.6), ("80", 0.2), ("40", 0.04)]
    assert judge_for(server).score(["p"]) == [None]
    server.top = [("80", 0.2), ("REF", 0.15), ("Sure", 0.1)]  # the number is sampled, but 0.2 < 0.25
    assert judge_for(server).score(["p"]) == [None]
    server.top = [("REF", 0.7), ("80", 0.25)]
    assert judge_for(server).score(["p"]) == [80.0]


def test_client_errors_are_not_retried_and_hint_the_fix(server: Server) -> None:
    judge = EndpointJudge(server.url + "/wrong", "m", backoff=0.01)
    with pytest.raises(pvrs.JudgeError, match=r"HTTP 404 .*check --judge-url"):
        judge.score(["p"])
    assert len(server.requests) == 1


def test_endpoint_settings_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PVRS_JUDGE_URL", "PVRS_JUDGE_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(pvrs.InputError, match=r"pass --judge-url URL .* or set \$PVRS_JUDGE_URL"):
        EndpointJudge.from_env(None, None, None)
    monkeypatch.setenv("PVRS_JUDGE_URL", "http://h/v1/")
    monkeypatch.setenv("PVRS_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    judge = EndpointJudge.from_env(None, None, None)
    assert (judge.endpoint, judge.model, judge.api_key) == ("http://h/v1/chat/completions", "env-model", "sk-env")
    assert EndpointJudge.from_env("http://o/v1/chat/completions", "flag", "k").endpoint == "http://o/v1/chat/completions"


def test_score_readers() -> None:
    assert weighted_score([("100", 0.5), (" 0", 0.5), ("101", 0.9), ("07", 0.9)]) == 50.0
    assert weighted_score([("yes", 1.0)]) is None
    assert weighted_score([("REFUSAL", 0.75), ("60", 0.2), ("7", 0.04)]) is None  # 0.24 on numbers
    assert weighted_score([("REFUSAL", 0.75), ("60", 0.25)]) == 60.0
    assert (stated_score(" 85\n"), stated_score("85.5."), stated_score("101"), stated_score("85 points")) == (85.0, 85.5, None, None)
    assert stated_score("REFUSAL") is None and stated_score(" refusal\n") is None


def test_rubric_files(tmp_path: Path) -> None:
    text = "Rate {trait} in {answer} to {question}; reply as {\"score\": N}"
    (tmp_path / "r.txt").write_text(text)
    (tmp_path / "r.json").write_text(json.dumps({"instruction": "x", "eval_prompt": text}))
    (tmp_path / "r.yaml").write_text("prompt: |\n  " + text.replace("\"", "'") + "\n")
    for name in ("r.txt", "r.json", "r.yaml"):
        rubric = load_rubric(str(tmp_path / name))
        rendered = rubric.render("Q?", "A.", "evil")
        assert rendered.startswith("Rate evil in A. to Q?; reply as {") and rubric.needs_trait
    with pytest.raises(pvrs.InputError, match=r"placeholder; pass --trait"):
        load_rubric(str(tmp_path / "r.txt")).render("Q", "A")
    (tmp_path / "bad.txt").write_text("Rate {question}")
    with pytest.raises(pvrs.InputError, match=r"bad.txt: the prompt has no \{answer\} placeholder"):
        load_rubric(str(tmp_path / "bad.txt"))
    (tmp_path / "bad.yaml").write_text("prompt: [unclosed")
    with pytest.raises(pvrs.InputError, match="cannot parse") as info:
        load_rubric(str(tmp_path / "bad.yaml"))
    assert "\n" not in str(info.value)  # the CLI's error is one line
    with pytest.raises(pvrs.InputError, match="not a built-in rubric"):
        load_rubric("nope")
    assert not load_rubric("coherence").needs_trait and load_rubric("role").needs_trait


def test_cache_survives_a_torn_line_and_keys_on_everything(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cache = ScoreCache(path)
    cache.put("a", 1.0)
    with path.open("a") as f:
        f.write('{"key": "b", "sco')  # killed mid-write
    again = ScoreCache(path)
    assert again.get("a") == 1.0 and again.get("b") is None
    again.put("c", 3.0)
    assert ScoreCache(path).get("c") == 3.0
    again.put("none", None)  # the judge gave no score: cached as such
    reread = ScoreCache(path)
    assert "none" in reread and reread.get("none") is None and "b" not in reread
    keys = {cache_key(*parts) for parts in [("j", "r", "t", "q", "a"), ("j2", "r", "t", "q", "a"), ("j", "r2", "t", "q", "a"),
                                            ("j", "r", "t2", "q", "a"), ("j", "r", "t", "q2", "a"), ("j", "r", "t", "q", "a2")]}
    assert len(keys) == 6


def _write_answers(path: Path, answers: list[Answer]) -> None:
    path.write_text("".join(json.dumps({"qid": a.qid, "persona_id": a.persona_id, "question": a.question, "answer": a.answer}) + "\n" for a in answers))


def test_cli_writes_scores_and_a_rerun_asks_nothing(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pvrs.extraction.generate import load_scores

    monkeypatch.setenv("PVRS_CACHE_DIR", str(tmp_path / "cache"))
    _write_answers(tmp_path / "answers.jsonl", ANSWERS)
    out = tmp_path / "scores.jsonl"
    argv = ["judge", str(tmp_path / "answers.jsonl"), "-o", str(out), "--judge-url", server.url,
            "--judge-model", "m", "--trait", "pirate speech"]
    assert main(argv) == 0
    assert len(server.requests) == len(ANSWERS) and (tmp_path / "cache" / "judge-scores.jsonl").is_file()
    rubric = load_rubric("trait")
    expected = {("pirate", a.qid): expected_score(rubric.render(a.question, a.answer, "pirate speech")) for a in ANSWERS}
    assert load_scores(out) == expected
    first = out.read_bytes()
    out.unlink()
    assert main(argv) == 0
    assert len(server.requests) == len(ANSWERS) and out.read_bytes() == first
    assert "12 answers (12 from the cache)" in capsys.readouterr().err.replace("\n", " ")
    # Another trait is another question for the judge, unless the rubric has no {trait}.
    assert main([*argv[:-1], "sea shanties"]) == 0
    assert len(server.requests) == 2 * len(ANSWERS)
    assert main([*argv, "--rubric", "coherence"]) == 0
    assert main([*argv[:-1], "sea shanties", "--rubric", "coherence"]) == 0
    assert len(server.requests) == 3 * len(ANSWERS)


def test_cli_unscored_answers_are_counted_left_out_and_cached(server: Server, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from pvrs.extraction.generate import filter_by_score, load_scores
    from pvrs.extraction.inputs import Persona, QAPair

    refused = {a.answer for a in ANSWERS[:5]}
    server.scorer = lambda prompt: None if any(a in prompt for a in refused) else 90.0
    _write_answers(tmp_path / "answers.jsonl", ANSWERS)
    out = tmp_path / "scores.jsonl"
    argv = ["judge", str(tmp_path / "answers.jsonl"), "-o", str(out), "--judge-url", server.url,
            "--judge-model", "m", "--rubric", "coherence", "--cache", str(tmp_path / "cache.jsonl")]
    assert main(argv) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps the line
    assert "12 answers (0 from the cache), mean coherence score 90.0; 5 answers could not be scored (REFUSAL or no number)" in err
    assert set(load_scores(out)) == {("pirate", a.qid) for a in ANSWERS[5:]}  # no row for an unscored answer
    assert sum('"score": null' in line for line in (tmp_path / "cache.jsonl").read_text().splitlines()) == 5
    # A rerun asks nothing: the unscored answers are cached as such.
    assert main(argv) == 0
    assert len(server.requests) == len(ANSWERS)
    assert "12 answers (12 from the cache), mean coherence score 90.0; 5 answers could not be scored" in " ".join(
        capsys.readouterr().err.split())
    # `pvrs extract --scores` drops an answer with no row as unscored, whatever --min-score.
    rows = [QAPair(a.qid, a.question, a.answer) for a in ANSWERS]
    kept = filter_by_score(Persona("pirate", "Pirate", "p"), rows, load_scores(out), min_score=0)
    assert [r.qid for r in kept] == [a.qid for a in ANSWERS[5:]]


def test_cli_failure_leaves_the_scores_file_untouched(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.mode = "garbage"
    _write_answers(tmp_path / "answers.jsonl", ANSWERS[:3])
    out = tmp_path / "scores.jsonl"
    out.write_text("old scores\n")
    code = main(["judge", str(tmp_path / "answers.jsonl"), "-o", str(out), "--judge-url", server.url,
                 "--judge-model", "m", "--rubric", "coherence", "--no-cache"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"pvrs judge: error: judge endpoint {server.url}/chat/completions: malformed reply")
    assert out.read_text() == "old scores\n" and sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "scores.jsonl"]


def test_cli_never_writes_over_its_answers_or_its_cache(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The scores file and the cache may be neither an answers input (a file, or a .jsonl in an
    input folder, which the next run would read as answers) nor one file; a --cache that is
    a folder fails before the judge is asked."""
    monkeypatch.delenv("PVRS_CACHE_DIR", raising=False)  # the default cache: beside the output
    (tmp_path / "gen").mkdir()
    _write_answers(tmp_path / "gen" / "a.jsonl", ANSWERS[:3])
    answers = tmp_path / "gen" / "a.jsonl"
    before = answers.read_bytes()
    base = ["judge", "--judge-url", server.url, "--judge-model", "m", "--rubric", "coherence"]
    for argv, message in [
        ([str(answers), "-o", str(answers)], f"--output {answers} is the answers file"),
        ([str(tmp_path / "gen"), "-o", str(tmp_path / "gen" / "scores.jsonl")], "is inside the answers folder"),
        ([str(tmp_path / "gen"), "-o", str(tmp_path / "s.jsonl"), "--cache", str(tmp_path / "gen" / "c.jsonl")],
         "the score cache"),
        ([str(answers), "-o", str(tmp_path / "s.json")], "the scores file is JSON lines; name it .jsonl"),
        ([str(answers), "-o", str(tmp_path / "s.jsonl"), "--cache", str(answers)], "the score cache"),
        ([str(answers), "-o", str(tmp_path / "judge-scores.jsonl")], "is also the score cache"),
        ([str(answers), "-o", str(tmp_path / "s.jsonl"), "--cache", str(tmp_path)], "is a folder; pass a file path"),
    ]:
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main([*base, str(answers), "-o", str(tmp_path / "s.jsonl"), "--cache", str(tmp_path / "c.jsonl"), "--no-cache"]) == 2
    assert capsys.readouterr().err.strip() == "pvrs judge: error: pass either --cache FILE or --no-cache, not both"
    assert not server.requests and answers.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.jsonl", "gen"]


def test_a_cache_that_is_another_file_is_refused_untouched(server: Server, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--cache given a scores file (say, confused with --output) would get cache rows appended."""
    _write_answers(tmp_path / "a.jsonl", ANSWERS[:2])
    scores = tmp_path / "old-scores.jsonl"
    scores.write_text(json.dumps({"persona_id": "pirate", "qid": "q0", "score": 50.0}) + "\n")
    before = scores.read_bytes()
    assert main(["judge", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "s.jsonl"), "--judge-url", server.url,
                 "--judge-model", "m", "--rubric", "coherence", "--cache", str(scores)]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert err == (f"pvrs judge: error: {scores}: not a judge score cache (line 1 is no {{key, score}} row); "
                   "pass --cache a new file or a cache")
    assert scores.read_bytes() == before and not server.requests


def test_cli_with_no_answers_unreadable_files_or_rows_that_are_no_objects_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"empty.jsonl": "", "blank.jsonl": "\n\n", "strings.json": '["a", "b"]', "object.json": '{"a": 1}',
             "null.jsonl": json.dumps({"qid": "q", "persona_id": "p", "question": "Q", "answer": "A"}) + "\nnull\n",
             "torn.parquet": "PAR1"}
    messages = {"empty.jsonl": "no answers to judge", "blank.jsonl": "no answers to judge",
                "strings.json": 'row 1: expected a JSON object of fields, got "a"',
                "object.json": "expected a JSON list of rows, or an object with 'rows'",
                "null.jsonl": "row 2: expected a JSON object of fields, got null",
                "torn.parquet": "torn.parquet: not a readable parquet file"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        code = main(["judge", str(tmp_path / name), "-o", str(tmp_path / "s.jsonl"), "--judge-url", "http://127.0.0.1:9/v1",
                     "--judge-model", "m", "--rubric", "coherence"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and messages[name] in err[0], err
    assert not (tmp_path / "s.jsonl").exists()


def test_answer_files_are_checked(tmp_path: Path) -> None:
    _write_answers(tmp_path / "a.jsonl", ANSWERS[:2])
    _write_answers(tmp_path / "b.jsonl", ANSWERS[1:3])
    with pytest.raises(pvrs.InputError, match=r"b.jsonl row 1: persona 'pirate' question 'q1' also appears in .*a.jsonl"):
        read_answers([tmp_path])
    gen = tmp_path / "generations" / "m"  # `pvrs extract --generate` saves both variants by default
    for variant in ("biography", "templated"):
        (gen / variant).mkdir(parents=True)
        _write_answers(gen / variant / "pirate.jsonl", ANSWERS[1:2])
    with pytest.raises(pvrs.InputError, match=r"templated/pirate.jsonl row 1: .*pass one variant's folder of generations"):
        read_answers([tmp_path / "generations"])
    (tmp_path / "b.jsonl").write_text('{"qid": "q9", "persona_id": "pirate", "question": "Q"}\n')
    with pytest.raises(pvrs.InputError, match=r"b.jsonl row 1: missing answer"):
        read_answers([tmp_path / "b.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(pvrs.InputError, match=r"empty: a folder with no \.jsonl answer files"):
        read_answers([tmp_path / "empty"])


def test_role_rubric_uses_each_personas_prompt(server: Server, tmp_path: Path) -> None:
    from pvrs.extraction.inputs import load_personas

    pirate = next(p for p in load_personas() if not p.is_baseline)
    answers = [Answer(pirate.id, "q1", "Who are you?", "Me."), Answer("baseline_assistant", "q1", "Who are you?", "An AI.")]
    _write_answers(tmp_path / "a.jsonl", answers)
    assert main(["judge", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "s.jsonl"), "--judge-url", server.url,
                 "--judge-model", "m", "--rubric", "role", "--no-cache"]) == 0
    prompts = [r["messages"][0]["content"] for r in server.requests]
    assert any(pirate.templated in p for p in prompts) and any("helpful AI assistant (no persona)" in p for p in prompts)
    _write_answers(tmp_path / "a.jsonl", [Answer("stranger", "q1", "Q", "A")])
    assert main(["judge", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "s.jsonl"), "--judge-url", server.url,
                 "--judge-model", "m", "--rubric", "role"]) == 2


def _favour_numbers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """A random tiny model spreads its next-token mass over the whole vocabulary, far under
    the judge's minimum on the numbers: lift the number tokens' logits by about 4 at the end
    of a rubric prompt (where the final hidden state barely depends on the prompt), keeping
    their own differences so that scores still vary."""
    import torch
    from pvrs.extraction.generate import as_chat, render
    from pvrs.judge.numbers import number_value

    numbers = [i for i in range(len(tokenizer)) if number_value(str(tokenizer.decode([i]))) is not None]
    ids = tokenizer(render(tokenizer, as_chat(load_rubric("coherence").render("Q?", "A."))), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        model.get_output_embeddings().weight[numbers] += 4 * h / h.dot(h)
    return model


def test_local_judge_on_a_tiny_model() -> None:
    from pvrs.judge.local import LocalJudge

    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    tokenizer = make_tokenizer("chatml")
    model = _favour_numbers(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer)
    prompts = [load_rubric("coherence").render(a.question, a.answer) for a in ANSWERS[:5]]
    judge = LocalJudge(model, tokenizer, "tiny", batch_size=2)
    scores = judge.score(prompts)
    assert all(s is not None and 0 <= s <= 100 for s in scores) and len(set(scores)) > 1
    assert judge.score(prompts) == scores
    alone = [LocalJudge(model, tokenizer, "tiny", batch_size=1).score([p])[0] for p in prompts]
    assert alone == pytest.approx(scores, abs=1e-3)


def test_local_judge_below_the_minimum_number_mass_gives_no_score() -> None:
    """The untouched tiny model puts about 0.03 of its mass on the number tokens."""
    from pvrs.judge.local import LocalJudge

    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    tokenizer = make_tokenizer("chatml")
    judge = LocalJudge(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, "tiny", batch_size=2)
    assert judge.score([load_rubric("coherence").render(a.question, a.answer) for a in ANSWERS[:3]]) == [None] * 3


@pytest.mark.slow
def test_local_judge_on_the_builtin_model() -> None:
    from pvrs.engines import models
    from pvrs.judge.local import LocalJudge

    model, tokenizer = models.load()
    judge = LocalJudge(model, tokenizer, models.DEFAULT_MODEL)
    rubric = load_rubric("coherence")
    prompts = [rubric.render("What is the capital of France?", "The capital of France is Paris."),
               rubric.render("What is the capital of France?", "purple the the seven banana of")]
    scores = judge.score(prompts)
    assert all(s is not None and 0 <= s <= 100 for s in scores) and judge.score(prompts) == scores


def test_scores_round_trip_into_extract(server: Server, tmp_path: Path) -> None:
    from pvrs.extraction.driver import extract
    from pvrs.extraction.generate import SamplingConfig, load_scores
    from pvrs.extraction.inputs import Persona, QAPair
    from pvrs.extraction.samples import SampleSource

    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    tokenizer = make_tokenizer("chatml")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    personas = [Persona("pirate", "Pirate", "You are a pirate captain.", "A pirate.")]
    qa = [QAPair(f"q{i}", f"Question {i}?", "unused") for i in range(8)]
    sampling = SamplingConfig(max_new_tokens=4, temperature=0.0)
    run = dict(variants=("templated",), progress=False)
    extract(model, tokenizer, personas, SampleSource(qa, generate=sampling, generations_dir=tmp_path / "gen"), **run)
    out = tmp_path / "scores.jsonl"
    assert main(["judge", str(tmp_path / "gen"), "-o", str(out), "--judge-url", server.url, "--judge-model", "m",
                 "--trait", "piracy"]) == 0
    scores = load_scores(out)
    assert set(scores) == {("pirate", q.qid) for q in qa}
    judged = SampleSource(qa, generate=sampling, generations_dir=tmp_path / "gen", scores=scores, min_score=50)
    result = extract(model, tokenizer, personas, judged, **run)
    kept = [q.qid for q in qa if scores[("pirate", q.qid)] >= 50]
    assert 0 < len(kept) < len(qa) and result.sample_ids[("pirate", "templated")] == kept


def test_cli_local_judge_from_a_model_folder(tmp_path: Path) -> None:
    from pvrs.extraction.generate import load_scores

    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    tokenizer = make_tokenizer("chatml")
    _favour_numbers(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer).save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    _write_answers(tmp_path / "a.jsonl", ANSWERS[:3])
    argv = ["judge", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "s.jsonl"), "--local", "--judge-model",
            str(tmp_path / "judge"), "--device", "cpu", "--rubric", "coherence"]
    assert main(argv) == 0
    scores = load_scores(tmp_path / "s.jsonl")
    assert len(scores) == 3 and all(0 <= s <= 100 for s in scores.values())
    assert main([*argv, "--judge-url", "http://x/v1"]) == 2


@pytest.mark.parametrize("score", [150, -1, "nan"])
def test_scores_off_the_0_100_scale_are_refused(tmp_path: Path, score: object) -> None:
    from pvrs.errors import InputError
    from pvrs.extraction.generate import load_scores

    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"persona_id": "pirate", "qid": "q1", "score": 50}) + "\n"
                    + json.dumps({"persona_id": "pirate", "qid": "q2", "score": score}) + "\n")
    # A 0-1 or 0-10 judge would silently drop or keep everything at --min-score 50.
    with pytest.raises(InputError, match=r"s\.jsonl row 2: score .* is not on the 0-100 scale"):
        load_scores(path)


def test_persona_vectors_preset_asks_as_its_judge_does(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Anthropic's persona_vectors judge (judge.py) asks for one token with its top 20
    logprobs at temperature 0 and seed 0; pvrs by default asks for 4 tokens (a number stated
    in several tokens is read whole when an endpoint sends no logprobs) and no seed. The
    preset's scores are cached apart from the default's: they are other requests."""
    monkeypatch.setenv("PVRS_CACHE_DIR", str(tmp_path / "cache"))
    _write_answers(tmp_path / "answers.jsonl", ANSWERS[:2])
    argv = ["judge", str(tmp_path / "answers.jsonl"), "-o", str(tmp_path / "s.jsonl"), "--judge-url", server.url,
            "--judge-model", "m", "--rubric", "coherence"]
    assert main(argv) == 0
    default = server.requests[-1]
    assert default["max_tokens"] == 4 and "seed" not in default
    assert main([*argv, "--preset", "persona_vectors"]) == 0
    assert len(server.requests) == 4  # not answered from the default's cache
    preset = server.requests[-1]
    assert (preset["max_tokens"], preset["seed"], preset["temperature"], preset["top_logprobs"]) == (1, 0, 0, 20)
    assert main([*argv, "--preset", "persona_vectors", "--no-logprobs"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "pvrs judge: error: --preset persona_vectors reads the top logprobs of one reply token, as persona_vectors "
        "does; drop --no-logprobs or the preset")
