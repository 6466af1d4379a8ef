"""Judge modes beside 0-100 (persona_vectors' judge `eval_type`s `0_10` and `binary`): scores
from given logprobs against hand computations, the endpoint and a local tiny model in each
mode, the mode chosen by a rubric or trait file or `--judge-mode`, and scores cached apart
per mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pvrs.cli import main
from pvrs.errors import InputError
from pvrs.judge import Answer, Rubric, ScoreCache, judge_answers, load_rubric
from pvrs.judge.endpoint import EndpointJudge
from pvrs.judge.numbers import stated_score, weighted_score
from pvrs.judge.trait import load_trait_file

from tests.judge_server import Server, server_fixture  # noqa: F401 (the `server` fixture)

RUBRIC = "Does the answer show the trait?\n{question}\n{answer}\n"


@pytest.mark.parametrize(
    "pairs,mode,expected",
    [
        # 0-10: the digits 0-9 only, as persona_vectors (a "10" token is not counted), x10.
        ([("7", 0.5), ("3", 0.25), ("10", 0.2), ("REFUSAL", 0.05)], "0-10", 10 * (7 * 0.5 + 3 * 0.25) / 0.75),
        ([(" 4", 0.3), ("4", 0.1), ("9", 0.2)], "0-10", 10 * (4 * 0.4 + 9 * 0.2) / 0.6),
        ([("REFUSAL", 0.4), ("5", 0.3), ("6", 0.3)], "0-10", None),  # REFUSAL beats every digit
        ([("REFUSAL", 0.3), ("5", 0.35), ("6", 0.35)], "0-10", 55.0),
        ([("5", 0.2), ("Sure", 0.8)], "0-10", None),  # under 0.25 on the digits
        # yes/no: P(YES) / (P(YES) + P(NO)), the exact tokens only, x100.
        ([("YES", 0.6), ("NO", 0.2), ("Yes", 0.1)], "yes/no", 75.0),
        ([("REFUSAL", 0.3), ("YES", 0.4), ("NO", 0.3)], "yes/no", 100 * 0.4 / 0.7),
        ([("REFUSAL", 0.5), ("YES", 0.3), ("NO", 0.2)], "yes/no", None),
        ([("YES", 0.2), ("maybe", 0.8)], "yes/no", None),
        ([("NO", 1.0)], "yes/no", 0.0),
        # 0-100 checks no REFUSAL token, as persona_vectors: the mass on the numbers decides.
        ([("REFUSAL", 0.7), ("60", 0.3)], "0-100", 60.0),
    ],
)
def test_mode_scores_equal_hand_computations(pairs: list[tuple[str, float]], mode: str, expected: float | None) -> None:
    score = weighted_score(pairs, mode)
    assert score == (None if expected is None else pytest.approx(expected))


def test_stated_answers_per_mode() -> None:
    assert [stated_score(t, "0-10") for t in ("7", " 10\n", "2.5", "11", "REFUSAL")] == [70.0, 100.0, 25.0, None, None]
    assert [stated_score(t, "yes/no") for t in ("YES", " no.\n", "maybe", "REFUSAL")] == [100.0, 0.0, None, None]


def _judge(server: Server) -> EndpointJudge:
    return EndpointJudge(server.url, "m", backoff=0.01)


@pytest.mark.parametrize(
    "mode,top,expected",
    [("0-10", [("8", 0.5), ("6", 0.25), ("Sure", 0.25)], 10 * (8 * 0.5 + 6 * 0.25) / 0.75),
     ("yes/no", [("YES", 0.3), ("NO", 0.6), ("REFUSAL", 0.1)], 100 * 0.3 / 0.9)],
)
def test_endpoint_scores_in_a_mode_from_its_logprobs(server: Server, mode: str, top: list[tuple[str, float]],
                                                     expected: float) -> None:
    server.mode, server.top = "logprobs", top
    assert _judge(server).score(["p"], mode=mode) == [pytest.approx(expected)]


def test_rubric_files_name_their_mode_and_the_flag_must_agree(tmp_path: Path) -> None:
    yes_no = tmp_path / "yn.json"
    yes_no.write_text(json.dumps({"eval_prompt": RUBRIC, "eval_type": "binary"}))
    ten = tmp_path / "ten.yaml"
    ten.write_text(f"judge_mode: 0-10\nprompt: {json.dumps(RUBRIC)}\n")
    plain = tmp_path / "plain.txt"
    plain.write_text(RUBRIC)
    assert (load_rubric(str(yes_no)).scoring, load_rubric(str(ten)).scoring, load_rubric(str(plain)).scoring) == (
        "yes/no", "0-10", "0-100")
    assert load_rubric(str(plain), mode="yes/no").scoring == "yes/no"
    assert load_rubric(str(ten), mode="0-10").scoring == "0-10"
    with pytest.raises(InputError, match=r"rubric 'ten' asks for 0-10 scores; drop --judge-mode yes/no"):
        load_rubric(str(ten), mode="yes/no")
    with pytest.raises(InputError, match=r"rubric 'trait' asks for 0-100 scores; drop --judge-mode 0-10"):
        load_rubric("trait", mode="0-10")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompt": RUBRIC, "eval_type": "1-5"}))
    with pytest.raises(InputError, match=r"bad.json eval_type: judge mode '1-5' is none of 0-100, 0-10, yes/no"):
        load_rubric(str(bad))


def test_a_trait_file_names_its_mode(tmp_path: Path) -> None:
    data = json.loads((Path(__file__).parent / "data" / "traits" / "pirate.json").read_text())
    path = tmp_path / "pirate.json"
    path.write_text(json.dumps({**data, "eval_type": "0_10"}))
    trait = load_trait_file(path)
    assert trait.rubric.scoring == "0-10" and trait.rubric.with_mode("0-10") == trait.rubric
    with pytest.raises(InputError, match="asks for 0-10 scores"):
        trait.rubric.with_mode("yes/no")


def test_scores_are_cached_per_mode(server: Server, tmp_path: Path) -> None:
    server.mode, server.top = "logprobs", [("YES", 0.5), ("NO", 0.25), ("7", 0.25)]
    cache = ScoreCache(tmp_path / "cache.jsonl")
    answers = [Answer("p", "q", "Q?", "A.")]
    scores = {mode: judge_answers(_judge(server), Rubric("r", RUBRIC, mode), answers, cache) for mode in ("0-100", "0-10", "yes/no")}
    assert scores == {"0-100": [7.0], "0-10": [70.0], "yes/no": [pytest.approx(100 * 0.5 / 0.75)]}
    assert len(server.requests) == 3
    again = judge_answers(_judge(server), Rubric("r", RUBRIC, "yes/no"), answers, cache)
    assert again == scores["yes/no"] and len(server.requests) == 3


def test_cli_judge_in_yes_no_mode_writes_100_times_p_yes(server: Server, tmp_path: Path) -> None:
    server.mode, server.top = "logprobs", [("YES", 0.6), ("NO", 0.2), ("Sure", 0.2)]
    (tmp_path / "a.jsonl").write_text(json.dumps({"persona_id": "p", "qid": "q", "question": "Q?", "answer": "A."}) + "\n")
    rubric = tmp_path / "r.txt"
    rubric.write_text(RUBRIC)
    out = tmp_path / "s.jsonl"
    argv = ["judge", str(tmp_path / "a.jsonl"), "-o", str(out), "--judge-url", server.url, "--judge-model", "m",
            "--rubric", str(rubric), "--no-cache"]
    assert main([*argv, "--judge-mode", "yes/no"]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["score"] == pytest.approx(75.0)
    assert main([*argv, "--rubric", "coherence", "--judge-mode", "yes/no"]) == 2


def _tiny_judge_with_answer_tokens() -> tuple[object, object]:
    """A tiny model whose tokenizer has YES and NO tokens, and whose YES, NO and digit logits
    are lifted by about 8 (YES), 7 (NO) and 5 (the digits) at the end of a rubric prompt (the
    final hidden state there barely depends on the prompt): a random model spreads its mass
    over the whole vocabulary, far under the 0.25 minimum."""
    import torch
    from pvrs.extraction.generate import as_chat, render

    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    tokenizer = make_tokenizer("chatml")
    tokenizer.add_tokens(["YES", "NO"])
    model = tiny_model("llama", vocab_size=len(tokenizer))
    digits = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() in list("0123456789")]
    ids = tokenizer(render(tokenizer, as_chat(RUBRIC.format(question="Q?", answer="A."))), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        weight = model.get_output_embeddings().weight
        for tokens, lift in (([tokenizer.convert_tokens_to_ids("YES")], 8.0), ([tokenizer.convert_tokens_to_ids("NO")], 7.0),
                             (digits, 5.0)):
            weight[tokens] += lift * h / h.dot(h)
    return model, tokenizer


def _by_hand(model: object, tokenizer: object, prompt: str, mode: str) -> float | None:
    """The next-token distribution at the end of the rendered prompt, scored as persona_vectors'
    judge scores the top logprobs of an API."""
    import torch
    from pvrs.extraction.generate import as_chat, render

    ids = tokenizer(render(tokenizer, as_chat(prompt)), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    with torch.no_grad():
        p = model(input_ids=torch.tensor([ids])).logits[0, -1].float().softmax(-1)  # type: ignore[operator]
    prob = {tokenizer.decode([i]): float(p[i]) for i in range(len(p))}  # type: ignore[attr-defined]
    if mode == "yes/no":
        mass = prob["YES"] + prob["NO"]
        return 100 * prob["YES"] / mass if mass >= 0.25 else None
    digits = {d: sum(q for t, q in prob.items() if t.strip() == str(d)) for d in range(10)}
    mass = sum(digits.values())
    return 10 * sum(d * q for d, q in digits.items()) / mass if mass >= 0.25 else None


@pytest.mark.parametrize("mode", ["0-10", "yes/no"])
def test_local_judge_in_a_mode_equals_the_hand_computation(mode: str) -> None:
    from pvrs.judge.local import LocalJudge

    model, tokenizer = _tiny_judge_with_answer_tokens()
    prompts = [RUBRIC.format(question=f"Question {i}?", answer=f"Answer {i}, arr.") for i in range(3)]
    scores = LocalJudge(model, tokenizer, "tiny", batch_size=2).score(prompts, mode=mode)  # type: ignore[arg-type]
    expected = [_by_hand(model, tokenizer, p, mode) for p in prompts]
    assert all(e is not None for e in expected) and not any(math.isnan(e or 0) for e in expected)
    assert scores == [pytest.approx(e, abs=1e-3) for e in expected]


def test_local_judge_without_yes_and_no_tokens_is_one_error() -> None:
    from pvrs.errors import JudgeError
    from pvrs.judge.local import LocalJudge

    from tests.tiny import make_tokenizer
    from tests.tiny_models import tiny_model

    tokenizer = make_tokenizer("chatml")
    judge = LocalJudge(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, "tiny")
    with pytest.raises(JudgeError, match="local judge tiny: its vocabulary has no tokens for both YES and NO"):
        judge.score(["p"], mode="yes/no")
