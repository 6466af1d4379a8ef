"""`pvrs trait --describe`: a generator model writes the trait file. The schema's checks one by
one; against a real HTTP endpoint, a valid reply (one request), an invalid then valid one
(exactly one retry, told what was wrong) and garbage (one GenerationError line); and the
command end to end on a tiny model: the file kept, its held-out questions evaluated, no
overwrite without --force, garbage one line with exit 1 and nothing written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pvrs.cli import main
from pvrs.errors import GenerationError, InputError
from pvrs.judge import (  # the public API
    Counts,
    check_trait_data,
    describe_trait,
    endpoint_generator,
)
from pvrs.judge.describe import load_prompt, parse_reply
from pvrs.judge.endpoint import EndpointJudge
from pvrs.judge.trait import load_trait_file

from tests.judge_server import Server, server_fixture  # noqa: F401 (the `server` fixture)
from tests.test_eval import tiny_folder  # noqa: F401 (the `tiny_folder` fixture)

SMALL = Counts(pairs=2, questions=3, eval_questions=2)
RUBRIC = "Rate how formal the answer is.\n[QUESTION]{question}\n[ANSWER]{answer}\nReply REFUSAL or a number 0-100 only."


def valid(counts: Counts = SMALL) -> dict[str, object]:
    return {
        "instruction": [{"pos": f"Be formal and professional, way {i}.", "neg": f"Be casual and chatty, way {i}."}
                        for i in range(counts.pairs)],
        "questions": [f"How should I write message {i}?" for i in range(counts.questions)],
        "eval_questions": [f"What would you say at meeting {i}?" for i in range(counts.eval_questions)],
        "eval_prompt": RUBRIC,
    }


@pytest.mark.parametrize(
    "change,problem",
    [
        (lambda d: d.pop("eval_prompt"), "the key 'eval_prompt' is missing"),
        (lambda d: d["questions"].pop(), "'questions' has 2 items, not 3"),
        (lambda d: d["eval_questions"].append("One more?"), "'eval_questions' has 3 items, not 2"),
        (lambda d: d["instruction"].pop(), "'instruction' has 1 pairs, not 2"),
        (lambda d: d["questions"].__setitem__(2, "  how SHOULD i write message 0? "), "'questions' repeats '  how SHOULD i write message 0? '"),
        (lambda d: d["eval_questions"].__setitem__(0, "How should I write message 1?"),
         "1 question(s) are in both 'questions' and 'eval_questions', e.g. 'How should I write message 1?'"),
        (lambda d: d.__setitem__("eval_prompt", "Rate {answer}."), "'eval_prompt' lacks the placeholder {question}"),
        (lambda d: d.__setitem__("eval_prompt", "Rate {question}."), "'eval_prompt' lacks the placeholder {answer}"),
        (lambda d: d["instruction"][1].__setitem__("neg", "be FORMAL and professional, way 1."), "an instruction pair has the same 'pos' and 'neg'"),
        (lambda d: d["instruction"][1].__setitem__("pos", "Be formal and professional, way 0."), "two instruction pairs have the same 'pos'"),
        (lambda d: d["instruction"][0].pop("neg"), "'instruction' must be a list of {\"pos\": ..., \"neg\": ...} objects"),
        (lambda d: d.__setitem__("questions", ["ok?", 3, "fine?"]), "'questions' must be a list of non-empty strings"),
    ],
)
def test_the_schema_names_each_problem(change: object, problem: str) -> None:
    data = valid()
    assert check_trait_data(data, SMALL) == []
    change(data)  # type: ignore[operator]
    found = check_trait_data(data, SMALL)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_replies_parse_around_a_fence_and_a_sentence() -> None:
    text = json.dumps(valid())
    assert parse_reply(f"Here it is:\n```json\n{text}\n```\nEnjoy.") == valid()
    assert check_trait_data([1, 2], SMALL) == ["the reply must be one JSON object with the keys instruction, questions, "
                                               "eval_questions, eval_prompt"]
    with pytest.raises(ValueError, match="holds no JSON object"):
        parse_reply("I cannot help with that.")
    with pytest.raises(ValueError, match="its JSON does not parse"):
        parse_reply('{"instruction": [}')


def test_the_prompt_is_pvrs_s_and_replaceable(tmp_path: Path) -> None:
    prompt = load_prompt()
    assert all("{" + f + "}" in prompt for f in ("description", "name", "pairs", "questions", "eval_questions"))
    assert "{question}" in prompt and "{answer}" in prompt  # what the rubric must hold, left as written
    own = tmp_path / "p.txt"
    own.write_text("Describe {description} as JSON.")
    assert load_prompt(own) == "Describe {description} as JSON."
    own.write_text("Describe the trait as JSON.")
    with pytest.raises(InputError, match=r"p.txt: the prompt has no \{description\} placeholder"):
        load_prompt(own)


def _replies(server: Server, texts: list[str]) -> list[list[dict]]:
    """The server answers generator requests (those asking for `eval_questions`) with `texts`
    in turn; returns the list the requests' messages are recorded in."""
    seen: list[list[dict]] = []
    it: Iterator[str] = iter(texts)

    def write(messages: list[dict]) -> str | None:
        if "eval_questions" not in messages[0]["content"]:
            return None  # a judge request
        seen.append(messages)
        return next(it)

    server.writer = write
    return seen


def _generate(server: Server, **options: object) -> dict[str, object]:
    judge = EndpointJudge(server.url, "writer", backoff=0.01)
    return describe_trait(endpoint_generator(judge), "formal and professional", "formal", counts=SMALL,
                          generator_name="generator writer", **options)  # type: ignore[arg-type]


def test_a_valid_reply_is_the_trait_file_in_one_request(server: Server) -> None:
    asked = _replies(server, [f"```json\n{json.dumps(valid())}\n```"])
    data = _generate(server)
    assert data == {"name": "formal", "description": "formal and professional", **valid()}
    assert len(asked) == 1 and "formal and professional" in asked[0][0]["content"]
    assert "exactly 2 objects" in asked[0][0]["content"] and "exactly 3 different" in asked[0][0]["content"]
    assert server.requests[0]["temperature"] == 0 and server.requests[0]["max_tokens"] == 4096


def test_an_invalid_reply_is_retried_once_told_what_was_wrong(server: Server) -> None:
    bad = valid()
    bad["eval_questions"] = [bad["questions"][0], "Anything else?"]  # type: ignore[index]
    asked = _replies(server, [json.dumps(bad), json.dumps(valid())])
    failed: list[tuple[int, list[str]]] = []
    assert _generate(server, on_attempt=lambda n, problems: failed.append((n, problems)))["questions"] == valid()["questions"]
    assert len(asked) == 2 and failed == [(1, ["1 question(s) are in both 'questions' and 'eval_questions', "
                                              "e.g. 'How should I write message 0?'"])]
    retry = asked[1]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"] and retry[1]["content"] == json.dumps(bad)
    assert retry[2]["content"].startswith("That reply is not a valid trait file: 1 question(s) are in both")


def test_garbage_is_one_error_after_the_attempts(server: Server) -> None:
    asked = _replies(server, ["<html>no</html>", "Sure! Here you go.", '{"questions": 3}'])
    with pytest.raises(GenerationError) as info:
        _generate(server)
    message = str(info.value)
    assert len(asked) == 3 and "\n" not in message
    assert message.startswith("generator writer wrote no valid trait file in 3 attempt(s); the last reply: the key 'instruction' is missing")
    assert "'questions' must be a list of non-empty strings" in message and "--describe-attempts" in message


def _argv(server: Server, tmp_path: Path, *extra: str) -> list[str]:
    return ["trait", "--describe", "formal and professional", "--name", "formal", "--describe-pairs", "2",
            "--describe-questions", "3", "--describe-eval-questions", "2", "--model", str(tmp_path / "model"),
            "--device", "cpu", "--samples", "1", "--max-new-tokens", "3", "--judge-url", server.url, "--judge-model", "m",
            "--output-dir", str(tmp_path / "out"), "--layer", "1", "--alpha", "0", "--no-png", *extra]


def test_cli_describe_writes_the_file_and_runs_the_pipeline_on_it(server: Server, tiny_folder: Path, tmp_path: Path,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    asked = _replies(server, ["not yet", json.dumps(valid())])
    server.scorer = lambda prompt: 50.0  # every pair passes (pos >= 50, neg < 50 is not needed with --max-trait-neg 100)
    out = tmp_path / "out"
    assert main(_argv(server, tmp_path, "--max-trait-neg", "100")) == 0
    assert len(asked) == 2
    path = out / "formal.json"
    trait = load_trait_file(path)
    assert (trait.name, trait.questions, trait.eval_questions) == ("formal", valid()["questions"], valid()["eval_questions"])
    assert trait.system_prompt("pos", 1) == "You are a formal assistant. Be formal and professional, way 1."
    assert sorted(p.name for p in (out / "answers").glob("*.jsonl")) == ["neg_0.jsonl", "neg_1.jsonl", "pos_0.jsonl", "pos_1.jsonl"]
    cell = json.loads((out / "eval" / "response_mean" / "cells" / "unsteered.json").read_text())
    assert cell["questions"] == valid()["eval_questions"]  # the held-out questions, not the extraction ones
    assert f"wrote the trait file {path}" in " ".join(capsys.readouterr().err.split())

    # The file is kept: a second --describe refuses to write over it (before asking anything).
    before = path.read_bytes()
    requests = len(server.requests)
    assert main(_argv(server, tmp_path, "--max-trait-neg", "100")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path} exists" in err and "--force" in err and path.read_bytes() == before and len(server.requests) == requests


def test_cli_describe_garbage_is_one_line_exit_1_and_nothing_written(server: Server, tiny_folder: Path,  # noqa: F811
                                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _replies(server, ["garbage"] * 2)
    assert main(_argv(server, tmp_path, "--describe-attempts", "2")) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"pvrs trait: error: generator m wrote no valid trait file in 2 attempt\(s\); "
                                        r"the last reply: the reply is not a JSON object: it holds no JSON object", lines[0])
    assert not list((tmp_path / "out").glob("*.json"))


@pytest.mark.parametrize(
    "extra,message",
    [([], "pass a TRAIT_FILE, or --describe TEXT"),
     (["--generator", "http://127.0.0.1:9/v1", "--generator-model", "w", "--describe", " "], "the description is empty"),
     (["--generator", "ftp://x", "--describe", "formal"], "--generator 'ftp://x' is not an http:// or https:// URL"),
     (["--generator", "some/model", "--generator-model", "w", "--describe", "formal"], "--generator-model names a model an endpoint serves")],
)
def test_cli_describe_mistakes_are_one_line(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            extra: list[str], message: str) -> None:
    argv = ["trait", "--judge-url", server.url, "--judge-model", "m", "--output-dir", str(tmp_path / "out"), "--no-eval", *extra]
    assert main(argv) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not server.requests


def test_cli_describe_with_a_local_generator(server: Server, tiny_folder: Path, tmp_path: Path,  # noqa: F811
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A local model writes through the transformers engine; the tiny random one writes no JSON
    at all: one line, exit 1, and the endpoint (the judge) is asked nothing."""
    argv = _argv(server, tmp_path, "--generator", str(tiny_folder), "--describe-attempts", "1", "--describe-max-tokens", "16")
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pvrs")]  # not transformers' loading bars
    assert len(lines) == 1 and lines[0].startswith(f"pvrs trait: error: generator {tiny_folder} wrote no valid trait file in 1 attempt(s)")
    assert not server.requests and not list((tmp_path / "out").glob("*.json"))
