"""Tokenizing rendered conversations and building the token masks of every mask strategy:
`prepare_inputs` renders a persona's samples under one template layout
(`pvrs.extraction.template`), tokenizes them, maps the contents' character spans to tokens
and builds every mask in one Rust call; `print_preview` shows which tokens each strategy
averages.

Tokenization uses `add_special_tokens=False` (the template already writes BOS) and
`return_offsets_mapping=True`; a prompt that starts with two BOS tokens is refused."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs import _core
from pvrs.errors import InputError, MaskError, ModelError, SpanError, TemplateError
from pvrs.extraction.masks import ALL_STRATEGIES, MaskStrategy, parse_strategies
from pvrs.extraction.template import (
    CharSpans,
    Rendered,
    Span,
    analyze_template,
    check_system,
    render_with,
    template_name,
)

# Rendering stays importable from here, next to the tokenization it feeds.
from pvrs.extraction.template import render as render

if TYPE_CHECKING:
    from rich.console import Console
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenSpans:
    """Token ranges `[first, end)` of the contents; None when a content covers no token."""

    system: Span | None
    question: Span | None
    answer: Span
    question_special: int | None  # the special token right after the question


@dataclass(frozen=True)
class PromptSpans:
    chars: CharSpans
    tokens: TokenSpans


@dataclass
class PreparedInput:
    """One tokenized conversation with its spans and the mask of each requested strategy.

    Field names follow the reference tool's `PreparedInput`."""

    sample_id: str
    question: str
    answer: str
    system_prompt: str | None
    prompt_text: str
    input_ids: np.ndarray  # (n_tokens,) int64
    offsets: np.ndarray  # (n_tokens, 2) int64 character offsets into prompt_text
    spans: PromptSpans
    token_masks: dict[MaskStrategy, np.ndarray]  # (n_tokens,) bool per strategy


def _sample_fields(sample: Any) -> tuple[str, str, str]:
    if isinstance(sample, Mapping):
        sid = sample.get("sample_id", sample.get("qid"))
        return str(sid), str(sample["question"]), str(sample["answer"])
    if isinstance(sample, (tuple, list)) and len(sample) == 3:
        return str(sample[0]), str(sample[1]), str(sample[2])
    sid = getattr(sample, "sample_id", None) or getattr(sample, "qid", None)
    if sid is None or not hasattr(sample, "question") or not hasattr(sample, "answer"):
        raise InputError(
            f"cannot read a sample from {type(sample).__name__}; pass (sample_id, question, answer) "
            "tuples or objects with sample_id/qid, question and answer"
        )
    return str(sid), str(sample.question), str(sample.answer)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of the tokenizer's special tokens (named ones and added tokens marked special)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids


class SpecialTokenWarning(UserWarning):
    """A question, answer or persona prompt holds a string its tokenizer reads as a control token."""


def _contents(r: Rendered) -> list[Span]:
    return [s for s in (r.spans.system, r.spans.question, r.spans.answer) if s is not None]


def _in_content(start: int, spans: Sequence[Span]) -> bool:
    return any(a <= start < b for a, b in spans)


def _special_in_content(
    r: Rendered, ids: Sequence[int], offsets: Sequence[tuple[int, int]], special_text: Mapping[int, str]
) -> str | None:
    """The first special token matched from its own string inside a content (not an `<unk>`
    standing for an unknown character), or None."""
    spans = _contents(r)
    return next(
        (
            special_text[t]
            for t, (a, b) in zip(ids, offsets, strict=True)
            if t in special_text and _in_content(a, spans) and r.text[a:b] == special_text[t]
        ),
        None,
    )


def _encode_content_as_text(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    spans: Sequence[Span],
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    sample_id: str,
    template: str,
) -> tuple[list[int], list[tuple[int, int]]]:
    """`text` tokenized as a whole, except that special-token strings inside the contents are
    text. A tokenizer encodes the text between added tokens piece by piece, so cutting at the
    template's added tokens and encoding each piece with `split_special_tokens` is exactly that,
    unless a piece's encoding depends on where it starts (a metaspace tokenizer marking only the
    first piece): the cut encoding of the text as it is must equal the whole one."""
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}
    cuts = [(a, b, i) for i, (a, b) in zip(ids, offsets, strict=True) if i in added and not _in_content(a, spans)]

    def encode(split: bool) -> tuple[list[int], list[tuple[int, int]]]:
        out_ids: list[int] = []
        out_offsets: list[tuple[int, int]] = []
        pos = 0
        for a, b, token in [*cuts, (len(text), len(text), None)]:
            if a > pos:
                piece = tokenizer(
                    text[pos:a], add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=split
                )
                out_ids += piece["input_ids"]
                out_offsets += [(x + pos, y + pos) for x, y in piece["offset_mapping"]]
            if token is not None:
                out_ids.append(token)
                out_offsets.append((a, b))
            pos = max(pos, b)
        return out_ids, out_offsets

    if encode(split=False)[0] != list(ids):
        raise TemplateError(
            f"sample {sample_id!r}: split_special_tokens is not supported for {template!r} (its "
            "tokenizer encodes text after a control token differently on its own); remove the "
            "control-token strings from the content instead"
        )
    return encode(split=True)


def prepare_inputs(
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Any],
    *,
    system_prompt: str | None,
    strategies: Sequence[MaskStrategy | str] = ALL_STRATEGIES,
    template_kwargs: Mapping[str, Any] | None = None,
    split_special_tokens: bool = False,
) -> list[PreparedInput]:
    """Render, tokenize and mask a persona's samples.

    `samples` are `(sample_id, question, answer)` tuples, mappings or objects with those
    attributes (`qid` is accepted for `sample_id`). One `system_prompt` for all samples
    (None: the baseline persona). Masks come from the Rust batch builder in one call.
    Raises `MaskError` naming the strategy and template when a strategy cannot be served,
    `SpanError` naming the sample when a content cannot be located or is empty.

    A content holding a special-token string (`<|im_end|>`) is tokenized as that control token,
    as the model's own tokenizer would, with a `SpecialTokenWarning`; `split_special_tokens=True`
    tokenizes such strings in contents as text instead (the template's own stay control tokens),
    which changes those samples' spans and vectors."""
    check_system(system_prompt)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"tokenizer {template_name(tokenizer)!r} is a slow (Python) tokenizer without offset "
            "mappings; load the fast one (AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    chosen = parse_strategies(tuple(strategies))
    rows = [_sample_fields(s) for s in samples]
    if not rows:
        return []
    layout = analyze_template(tokenizer, has_system=system_prompt is not None, template_kwargs=template_kwargs)
    persona = [s for s in chosen if s in (MaskStrategy.PERSONA_MEAN, MaskStrategy.PERSONA_LAST)]
    if persona and system_prompt is None and layout.default_system is None:
        raise MaskError(
            f"mask strategy {persona[0].value} needs a system prompt, but the baseline persona has "
            f"none and the chat template of {layout.template!r} injects no default; drop "
            f"{persona[0].value} for the baseline"
        )
    for sid, _, answer in rows:
        if not answer.strip():
            raise SpanError(f"sample {sid!r}: the answer is empty; every QA pair needs a non-empty answer")
    rendered = [render_with(tokenizer, layout, system_prompt, q, a, sample_id=sid) for sid, q, a in rows]
    texts = [r.text for r in rendered]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids_per_sample = list(encoded["input_ids"])
    offsets_per_sample = list(encoded["offset_mapping"])
    special_ids = special_token_ids(tokenizer)
    special_text = {i: tokenizer.convert_ids_to_tokens(i) for i in special_ids}
    flagged = [
        (i, token)
        for i, (ids, offs, r) in enumerate(zip(ids_per_sample, offsets_per_sample, rendered, strict=True))
        if (token := _special_in_content(r, ids, offs, special_text)) is not None
    ]
    if flagged and split_special_tokens:
        for i, _ in flagged:
            ids_per_sample[i], offsets_per_sample[i] = _encode_content_as_text(
                tokenizer, texts[i], _contents(rendered[i]), ids_per_sample[i], offsets_per_sample[i],
                rows[i][0], layout.template,
            )
    elif flagged:
        import warnings

        i, token = flagged[0]
        more = f" and {len(flagged) - 1} more" if len(flagged) > 1 else ""
        warnings.warn(
            f"sample {rows[i][0]!r}{more}: the content holds {token!r}, "
            "which the tokenizer reads as its control token, not as text; pass "
            "split_special_tokens=True (--split-special-tokens) to tokenize it as text (this "
            "changes the spans and the vectors)",
            SpecialTokenWarning,
            stacklevel=2,
        )
    bos = getattr(tokenizer, "bos_token_id", None)
    for (sid, _, _), ids in zip(rows, ids_per_sample, strict=True):
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            raise TemplateError(
                f"sample {sid!r}: the prompt starts with two BOS tokens under {layout.template!r}; "
                "the chat template already writes BOS, so tokenize with add_special_tokens=False"
            )

    lengths = np.fromiter((len(ids) for ids in ids_per_sample), dtype=np.int64, count=len(rows))
    flat_ids = np.fromiter(itertools.chain.from_iterable(ids_per_sample), dtype=np.int64, count=int(lengths.sum()))
    chain = itertools.chain.from_iterable
    offsets = np.fromiter(chain(chain(offsets_per_sample)), dtype=np.int64, count=2 * len(flat_ids)).reshape(-1, 2)
    special = np.isin(flat_ids, np.fromiter(special_ids, dtype=np.int64))
    span_rows = np.array(
        [[*(r.spans.system or (-1, -1)), *r.spans.question, *r.spans.answer] for r in rendered],
        dtype=np.int64,
    )
    text_lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(rows))
    masks, token_spans, question_special = _core.build_token_masks(
        offsets,
        lengths,
        span_rows,
        text_lens,
        [s.value for s in chosen],
        special=special,
        sample_ids=[sid for sid, _, _ in rows],
        template=layout.template,
    )

    out: list[PreparedInput] = []
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    for i, ((sid, question, answer), r) in enumerate(zip(rows, rendered, strict=True)):
        lo, hi = int(starts[i]), int(starts[i] + lengths[i])
        tspan = [None if row[0] < 0 else (int(row[0]), int(row[1])) for row in token_spans[i]]
        answer_tokens = tspan[2]
        assert answer_tokens is not None  # the Rust builder errors on an answer without tokens
        special_at = int(question_special[i])
        out.append(
            PreparedInput(
                sample_id=sid,
                question=question,
                answer=answer,
                system_prompt=system_prompt,
                prompt_text=r.text,
                input_ids=flat_ids[lo:hi],
                offsets=offsets[lo:hi],
                spans=PromptSpans(
                    r.spans,
                    TokenSpans(tspan[0], tspan[1], answer_tokens, special_at if special_at >= 0 else None),
                ),
                token_masks={s: masks[k, lo:hi] for k, s in enumerate(chosen)},
            )
        )
    return out


_STYLES = (
    "bold black on cyan",
    "bold black on magenta",
    "bold black on yellow",
    "bold black on green",
    "bold white on blue",
    "bold white on red",
    "bold black on bright_white",
    "bold black on bright_green",
)


def print_preview(
    console: Console,
    tokenizer: PreTrainedTokenizerBase,
    prepared: PreparedInput,
    strategies: Sequence[MaskStrategy | str] | None = None,
    *,
    context: int = 60,
) -> None:
    """Print which tokens each strategy averages: `*_mean` strategies over the whole rendered
    prompt, single-token strategies as the token in `context` characters either side."""
    from rich.markup import escape
    from rich.text import Text

    chosen = parse_strategies(tuple(strategies)) if strategies else list(prepared.token_masks)
    text_all = prepared.prompt_text
    console.rule(
        f"[bold]{escape(prepared.sample_id)}[/] · {len(prepared.input_ids)} tokens · "
        f"{escape(template_name(tokenizer))}"
    )
    for k, strategy in enumerate(chosen):
        mask = prepared.token_masks.get(strategy)
        if mask is None:
            raise MaskError(f"mask strategy {strategy.value} was not prepared for sample {prepared.sample_id!r}")
        style = _STYLES[k % len(_STYLES)]
        picked = np.flatnonzero(mask)
        pieces = tokenizer.convert_ids_to_tokens([int(prepared.input_ids[t]) for t in picked])
        shown = ", ".join(repr(p) for p in pieces[:6]) + (", ..." if len(pieces) > 6 else "")
        console.print(Text.assemble((f" {strategy.value} ", style), f"  {len(picked)} token(s): {shown}"))
        lo, hi = 0, len(text_all)
        if len(picked) == 1:  # a window around the one token, newlines made visible
            s, e = (int(v) for v in prepared.offsets[picked[0]])
            lo, hi = max(0, s - context), min(len(text_all), e + context)
        text = Text(text_all[lo:hi])
        for t in picked:
            s, e = (int(v) for v in prepared.offsets[t])
            if s < e:
                text.stylize(style, s - lo, e - lo)
        if len(picked) == 1:
            text = Text("…" if lo else "") + text + Text("…" if hi < len(text_all) else "")
            text = Text("⏎").join(text.split("\n", allow_blank=True))
        console.print(text)
        console.print()
