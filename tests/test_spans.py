"""The Rust mask builder (`pvrs._core.build_token_masks`) agrees with the plain-Python
reference (`pvrs.extraction.reference`) on masks, token spans and errors, for random texts with
accents, CJK, emoji, combining marks, right-to-left scripts and edge whitespace, random
tokenizations (shared-character tokens, zero-width tokens) and real tiny tokenizers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pvrs import InvalidArgumentError, MaskError, PvrsError, SpanError, _core
from pvrs.extraction import reference
from pvrs.extraction.chat import prepare_inputs
from pvrs.extraction.masks import ALL_STRATEGIES
from tiny import make_tokenizer

NAMES = [s.value for s in ALL_STRATEGIES]
ALPHABET = st.sampled_from(
    list("abcXYZ019 .,?!")
    + list("éàüñçøß")  # accents
    + ["e\u0301", "a\u0308", "\u0915\u094d\u0937"]  # combining marks, Devanagari conjunct
    + list("東京北京上海日本語")  # CJK
    + ["😀", "🚀", "👩‍💻", "🇫🇷"]  # emoji, ZWJ sequence, flag
    + list("שלוםمرحبا")  # RTL
    + ["\n", "\t", "  "]
)
TEXT = st.lists(ALPHABET, min_size=0, max_size=12).map("".join)
NONEMPTY = st.lists(ALPHABET, min_size=1, max_size=12).map("".join)


def run_both(*args, **kwargs):
    """Rust and reference results, or the error class each raised."""
    out = []
    for fn in (_core.build_token_masks, reference.build_token_masks):
        try:
            out.append(fn(*args, **kwargs))
        except PvrsError as exc:
            out.append(type(exc))
    return out


def assert_same(rust, ref) -> None:
    if isinstance(rust, type) or isinstance(ref, type):
        assert rust == ref
        return
    for a, b in zip(rust, ref, strict=True):
        np.testing.assert_array_equal(a, b)


@st.composite
def synthetic_batch(draw):
    """A batch of prompts `<s>SYS<m>QUESTION<m>ANSWER<e>` cut into random tokens."""
    n_samples = draw(st.integers(1, 4))
    offsets, lengths, spans, text_lens, special = [], [], [], [], []
    for _ in range(n_samples):
        has_system = draw(st.booleans())
        system = draw(NONEMPTY) if has_system else ""
        question = draw(TEXT)
        answer = draw(st.one_of(NONEMPTY, st.just(question + system), st.just(system or "x")))
        pieces = [("<s>", True), (system, False), ("<m>", True), (question, False), ("<m>", True), (answer, False), ("<e>", True)]
        text, span_of, cuts = "", [], []
        for piece, is_special in pieces:
            span_of.append((len(text), len(text) + len(piece)))
            if is_special:
                cuts.append((len(text), len(text) + len(piece), True))
            else:
                # random token boundaries inside the content
                points = sorted(set(draw(st.lists(st.integers(0, len(piece)), max_size=6))) | {0, len(piece)})
                cuts += [(len(text) + a, len(text) + b, False) for a, b in itertools.pairwise(points) if a < b]
            text += piece
        tokens = []
        for s, e, is_special in cuts:
            if not is_special and draw(st.integers(0, 9)) == 0:
                tokens.append((s, e, False))  # a character split into several byte tokens
            if draw(st.integers(0, 14)) == 0:
                tokens.append((0, 0, True))  # zero-width special
            tokens.append((s, e, is_special))
        if draw(st.integers(0, 19)) == 0 and len(tokens) > 2:  # corrupt: offsets go backwards
            i = draw(st.integers(1, len(tokens) - 1))
            tokens[i - 1], tokens[i] = tokens[i], tokens[i - 1]
        offsets += [(s, e) for s, e, _ in tokens]
        special += [sp for _, _, sp in tokens]
        lengths.append(len(tokens))
        sys_span = span_of[1] if has_system else (-1, -1)
        spans.append([*sys_span, *span_of[3], *span_of[5]])
        text_lens.append(len(text))
    strategies = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True))
    return (
        np.array(offsets, dtype=np.int64).reshape(-1, 2),
        np.array(lengths, dtype=np.int64),
        np.array(spans, dtype=np.int64),
        np.array(text_lens, dtype=np.int64),
        strategies,
        np.array(special, dtype=bool),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(synthetic_batch(), st.booleans())
def test_rust_matches_reference_on_random_tokenizations(batch, as_u32) -> None:
    offsets, lengths, spans, text_lens, strategies, special = batch
    if as_u32:
        offsets = offsets.astype(np.uint32)
    ids = [f"id-{i}" for i in range(len(lengths))]
    rust, ref = run_both(offsets, lengths, spans, text_lens, strategies, special=special, sample_ids=ids, template="t")
    assert_same(rust, ref)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["chatml", "llama3", "gemma3", "mistral", "qwen3"]),
    system=st.one_of(st.none(), NONEMPTY),
    question=NONEMPTY,
    answer=NONEMPTY,
    repeat=st.sampled_from(["none", "question", "system"]),
)
def test_rust_matches_reference_through_real_tokenizers(family, system, question, answer, repeat) -> None:
    if system is not None and not system.strip():
        system = None
    if not answer.strip():
        answer += "x"
    if repeat == "question":
        answer = question + answer
    elif repeat == "system" and system:
        answer = answer + system
    tok = make_tokenizer(family)
    strategies = ALL_STRATEGIES[2:] if system is None else ALL_STRATEGIES
    try:
        [p] = prepare_inputs(tok, [("s", question, answer)], system_prompt=system, strategies=strategies)
    except MaskError as exc:
        # A question that renders to nothing (a trimming template and an all-space question).
        assert "question" in str(exc)
        return
    c = p.spans.chars
    row = np.array([[*(c.system or (-1, -1)), *c.question, *c.answer]], dtype=np.int64)
    special = np.isin(p.input_ids, sorted(tok.all_special_ids))
    args = (p.offsets, np.array([len(p.input_ids)]), row, np.array([len(p.prompt_text)]), [s.value for s in strategies])
    rust, ref = run_both(*args, special=special, template="t")
    assert_same(rust, ref)
    masks = rust[0]
    for k, s in enumerate(strategies):
        np.testing.assert_array_equal(masks[k], p.token_masks[s])
    # the answer span is the rendered answer, found after the question even when it repeats it
    assert c.answer[0] >= c.question[1]
    assert p.prompt_text[slice(*c.answer)].strip() == answer.strip()


def test_outputs_and_argument_errors() -> None:
    offsets = np.array([[0, 3], [3, 5], [5, 6], [6, 9]], dtype=np.uint32)
    lengths = np.array([4])
    spans = np.array([[-1, -1, 3, 5, 6, 9]])
    masks, token_spans, special = _core.build_token_masks(
        offsets, lengths, spans, np.array([9]), NAMES[2:], special=np.array([1, 0, 1, 1], bool)
    )
    assert masks.shape == (6, 4) and masks.dtype == np.bool_
    assert token_spans.tolist() == [[[-1, -1], [1, 2], [3, 4]]]
    assert special.tolist() == [2]
    with pytest.raises(InvalidArgumentError, match="columns"):
        _core.build_token_masks(np.zeros((4, 3), np.int64), lengths, spans, np.array([9]), NAMES)
    with pytest.raises(InvalidArgumentError, match="uint32 or int64"):
        _core.build_token_masks(offsets.astype(np.float32), lengths, spans, np.array([9]), NAMES)
    with pytest.raises(InvalidArgumentError, match="sum to"):
        _core.build_token_masks(offsets, np.array([5]), spans, np.array([9]), NAMES)
    with pytest.raises(InvalidArgumentError, match="unknown mask strategy"):
        _core.build_token_masks(offsets, lengths, spans, np.array([9]), ["nope"])
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        wide = np.zeros((4, 4), np.int64)
        _core.build_token_masks(wide[:, ::2], lengths, spans, np.array([9]), NAMES)
    with pytest.raises(SpanError, match=r"'q9'.*outside"):
        _core.build_token_masks(offsets, lengths, np.array([[-1, -1, 3, 5, 6, 12]]), np.array([9]), NAMES, sample_ids=["q9"])


def test_large_batch_uses_the_parallel_path_and_matches() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 60, size=300)
    offsets, spans = [], []
    for n in lengths:
        offsets += [(t, t + 1) for t in range(n)]
        q = int(rng.integers(2, n // 2))
        spans.append([0, 2, 2, q, q + 1, int(n)])
    args = (np.array(offsets, np.int64), lengths.astype(np.int64), np.array(spans, np.int64), lengths.astype(np.int64), NAMES)
    special = np.ones(int(lengths.sum()), bool)
    assert_same(*run_both(*args, special=special))
