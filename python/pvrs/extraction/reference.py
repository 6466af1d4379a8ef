"""Plain-Python reference of the Rust mask builder (`pvrs._core.build_token_masks`).

Test and benchmark use only: it implements the rules documented in `rust/spans/mod.rs` one
token at a time, so property tests can check the Rust fast path against it and
`benches/bench_masks.py` can measure the speed-up. Same arguments, same outputs, same
error classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pvrs.errors import InvalidArgumentError, MaskError, SpanError
from pvrs.extraction.masks import MaskStrategy


def _name(sample_ids: Sequence[str] | None, i: int) -> str:
    return f"sample {sample_ids[i]!r}" if sample_ids else f"sample #{i}"


def _sample_tokens(
    offsets: list[list[int]],
    special: list[bool] | None,
    span_row: list[int],
    text_len: int,
    name: str,
) -> tuple[list[tuple[int, int] | None], int | None]:
    """Token spans `[system, question, answer]` and the special token after the question."""
    sys_span = None if span_row[0] < 0 and span_row[1] < 0 else (span_row[0], span_row[1])
    targets = [sys_span, (span_row[2], span_row[3]), (span_row[4], span_row[5])]
    for what, span in zip(("system prompt", "question", "answer"), targets, strict=True):
        if span is not None and (span[0] < 0 or span[0] > span[1] or span[1] > text_len):
            raise SpanError(f"{name}: the {what} span {span[0]}..{span[1]} lies outside the prompt")
    if targets[2][0] == targets[2][1]:
        raise SpanError(f"{name}: the answer is empty; every QA pair needs a non-empty answer")
    bounds: list[tuple[int, int] | None] = [None, None, None]
    prev_start = prev_end = 0
    for t, (s, e) in enumerate(offsets):
        if s < 0 or e < 0:
            raise SpanError(f"{name}: token {t} has a negative offset")
        if s == e:
            continue
        if s > e or e > text_len:
            raise SpanError(f"{name}: token {t} has offsets ({s}, {e}) outside the prompt")
        if s < prev_start or e < prev_end:
            raise SpanError(f"{name}: offsets are not monotone at token {t}")
        prev_start, prev_end = s, e
        for k, span in enumerate(targets):
            if span is not None and s < span[1] and e > span[0]:
                bound = bounds[k]
                bounds[k] = (t, t + 1) if bound is None else (bound[0], t + 1)
    if bounds[2] is None:
        raise SpanError(f"{name}: the answer covers no token")
    question_special = None
    if bounds[1] is not None:
        t = bounds[1][1]
        if t < len(offsets) and (offsets[t][0] == offsets[t][1] or (special is not None and special[t])):
            question_special = t
    return bounds, question_special


def _select(
    strategy: MaskStrategy,
    bounds: list[tuple[int, int] | None],
    question_special: int | None,
    offsets: list[list[int]],
    has_system: bool,
    name: str,
    template: str,
) -> list[int]:
    system, question, answer = bounds
    assert answer is not None
    if strategy is MaskStrategy.QUESTION_LAST_SPECIAL:
        if question_special is None:
            raise MaskError(
                f"{name}: question_last_special needs a special token right after the question, "
                f"but the chat template {template!r} has none there; use question_last instead"
            )
        return [question_special]
    span = {
        MaskStrategy.PERSONA_MEAN: system,
        MaskStrategy.PERSONA_LAST: system,
        MaskStrategy.QUESTION_LAST: question,
    }.get(strategy, answer)
    if span is None:
        why = "no system prompt" if not has_system and system is None else "covers no token"
        raise MaskError(f"{name}: mask strategy {strategy.value} selects no token under {template!r}: {why}")
    first, end = span
    if strategy in (MaskStrategy.PERSONA_MEAN, MaskStrategy.ANSWER_MEAN):
        return [t for t in range(first, end) if offsets[t][0] != offsets[t][1]]
    if strategy is MaskStrategy.ANSWER_PREVIOUS:
        if first == 0:
            raise MaskError(f"{name}: mask strategy answer_previous selects no token: the answer starts the prompt")
        return [first - 1]
    if strategy is MaskStrategy.ANSWER_FIRST:
        return [first]
    return [end - 1]  # *_last


def build_token_masks(
    offsets: np.ndarray,
    lengths: np.ndarray,
    spans: np.ndarray,
    text_lens: np.ndarray,
    strategies: Sequence[str],
    *,
    special: np.ndarray | None = None,
    sample_ids: Sequence[str] | None = None,
    template: str = "chat template",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same contract as `pvrs._core.build_token_masks`, in plain Python."""
    chosen = [MaskStrategy(s) for s in strategies]
    lengths_list = [int(n) for n in lengths]
    if len(spans) != len(lengths_list) or len(text_lens) != len(lengths_list):
        raise InvalidArgumentError("lengths, spans and text_lens must have one row per sample")
    n_total = sum(lengths_list)
    if len(offsets) != n_total:
        raise InvalidArgumentError(f"offsets hold {len(offsets)} tokens but lengths sum to {n_total}")
    flat = offsets.tolist()
    flags = special.tolist() if special is not None else None
    masks = np.zeros((len(chosen), n_total), dtype=bool)
    token_spans = np.full((len(lengths_list), 3, 2), -1, dtype=np.int64)
    specials = np.full(len(lengths_list), -1, dtype=np.int64)
    start = 0
    for i, n in enumerate(lengths_list):
        name = _name(sample_ids, i)
        sample_offsets = flat[start : start + n]
        row = [int(v) for v in spans[i]]
        bounds, question_special = _sample_tokens(
            sample_offsets,
            flags[start : start + n] if flags is not None else None,
            row,
            int(text_lens[i]),
            name,
        )
        for k, strategy in enumerate(chosen):
            for t in _select(strategy, bounds, question_special, sample_offsets, row[0] >= 0, name, template):
                masks[k, start + t] = True
        for j, bound in enumerate(bounds):
            if bound is not None:
                token_spans[i, j] = bound
        if question_special is not None:
            specials[i] = question_special
        start += n
    return masks, token_spans, specials
