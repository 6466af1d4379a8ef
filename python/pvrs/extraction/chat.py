"""Rendering conversations with a model's chat template, locating each content's exact
character span, tokenizing, and building the token masks of every mask strategy.

How spans are found (never by searching for the content text, which picks the wrong
place when an answer repeats the question or the persona prompt):

1. The template is rendered once with unique *sentinels* in place of the system, question
   and answer contents. The text around the sentinels is the template's own structure: a
   list of literal segments, `segments[0] + content_0 + segments[1] + ... + segments[-1]`.
2. Each real conversation is rendered with the real template, and matched against those
   segments *at fixed positions*: literal, content, literal, ... Templates that trim
   whitespace (Llama 3, Gemma, Mistral's answers) are handled by letting each content
   lose leading/trailing whitespace, and only whitespace; the whole rendering must be
   reproduced exactly or `SpanError` names the sample and the template.

System prompts:

* A template that supports a system role gets a system message (`system_mode="native"`).
* A template that refuses one (Gemma 2 raises) or drops it (Mistral v0.3 shows it only
  with the *last* user turn, so a finished conversation loses it) gets the persona merged
  into the first user turn as `system + "\\n\\n" + question`, the layout Gemma 3 and Mistral
  use themselves (`system_mode="merged"`). The persona span is still the system content only.
* The baseline persona (`system=None`) is rendered with no system message. Templates that
  then inject a default system prompt (Qwen 2.5's "You are Qwen...", SmolLM2's "You are a
  helpful AI assistant named SmolLM...") keep it, because that is the model's natural
  no-persona state; pvrs locates it structurally (the text the template puts where the
  system content goes) and reports it as the persona span with `system_is_default=True`,
  so `persona_*` strategies average the default prompt. Templates with no default prompt
  (Llama 3, Gemma, ...) have no persona span for the baseline, and asking for a
  `persona_*` strategy raises `MaskError`.

Tokenization uses `add_special_tokens=False` (the template already writes BOS) and
`return_offsets_mapping=True`; a prompt that starts with two BOS tokens is refused."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pvrs import _core
from pvrs.errors import InputError, MaskError, ModelError, SpanError, TemplateError
from pvrs.extraction.masks import ALL_STRATEGIES, MaskStrategy, parse_strategies

if TYPE_CHECKING:
    from rich.console import Console
    from transformers import PreTrainedTokenizerBase

MERGE_SEPARATOR = "\n\n"
_SENTINEL = "PVRSSENTINEL{}X7Q"
_ROLES = ("system", "question", "answer")

SystemMode = Literal["native", "merged", "none"]
Span = tuple[int, int]


@dataclass(frozen=True)
class CharSpans:
    """Character spans `[start, end)` of the contents in the rendered prompt."""

    system: Span | None
    question: Span
    answer: Span
    system_is_default: bool = False  # the span is the template's injected default prompt


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


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: CharSpans
    system_mode: SystemMode


@dataclass(frozen=True)
class TemplateLayout:
    """The literal text a chat template writes around the contents (see module docstring)."""

    template: str  # a name for messages: the tokenizer's name_or_path
    system_mode: SystemMode
    roles: tuple[str, ...]  # which contents appear, in order
    segments: tuple[str, ...]  # len(roles) + 1 literal segments
    default_system: Span | None = None  # injected default system prompt, inside segments[0]
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)


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


def template_name(tokenizer: PreTrainedTokenizerBase) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _messages(system: str | None, question: str, answer: str, mode: SystemMode) -> list[dict[str, str]]:
    if mode == "merged" and system is not None:
        return [
            {"role": "user", "content": system + MERGE_SEPARATOR + question},
            {"role": "assistant", "content": answer},
        ]
    head = [{"role": "system", "content": system}] if mode == "native" and system is not None else []
    return [*head, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise `TemplateError` when the tokenizer cannot render chats."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"tokenizer {template_name(tokenizer)!r} has no chat template; use an instruct/chat "
            "model or set tokenizer.chat_template"
        )


def _apply(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], kwargs: Mapping[str, Any]) -> str:
    require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False, **dict(kwargs)
    )
    if not isinstance(text, str):
        raise TemplateError(f"the chat template of {template_name(tokenizer)!r} did not render a string")
    return text


def _split_on_sentinels(text: str, roles: Sequence[str]) -> tuple[str, ...] | None:
    """Literal segments around the sentinels of `roles`, or None if one is missing."""
    segments, pos = [], 0
    for role in roles:
        sentinel = _SENTINEL.format(role.upper())
        at = text.find(sentinel, pos)
        if at < 0 or text.count(sentinel) != 1:
            return None
        segments.append(text[pos:at])
        pos = at + len(sentinel)
    segments.append(text[pos:])
    return tuple(segments)


def analyze_template(
    tokenizer: PreTrainedTokenizerBase,
    *,
    has_system: bool,
    template_kwargs: Mapping[str, Any] | None = None,
) -> TemplateLayout:
    """Find the literal structure of the chat template by rendering sentinels."""
    kwargs = dict(template_kwargs or {})
    name = template_name(tokenizer)
    s, q, a = (_SENTINEL.format(r.upper()) for r in _ROLES)
    no_system = _split_on_sentinels(_apply(tokenizer, _messages(None, q, a, "none"), kwargs), _ROLES[1:])
    if no_system is None:
        raise TemplateError(
            f"the chat template of {name!r} does not render the question and the answer verbatim "
            "once each; pvrs cannot locate them"
        )
    try:
        native = _split_on_sentinels(_apply(tokenizer, _messages(s, q, a, "native"), kwargs), _ROLES)
    except Exception:  # the template refuses a system role (Gemma 2 raises)
        native = None
    if not has_system:
        default = None
        if native is not None:
            # Where the system content would go, the no-system rendering may hold a default.
            lead, between = native[0], native[1]
            prefix = no_system[0]
            if prefix.startswith(lead) and prefix.endswith(between) and len(prefix) > len(lead) + len(between):
                default = (len(lead), len(prefix) - len(between))
        return TemplateLayout(name, "none", _ROLES[1:], no_system, default, kwargs)
    if native is not None:
        return TemplateLayout(name, "native", _ROLES, native, None, kwargs)
    merged = _split_on_sentinels(_apply(tokenizer, _messages(s, q, a, "merged"), kwargs), _ROLES)
    if merged is None:
        raise TemplateError(f"the chat template of {name!r} cannot show a system prompt, even merged into the user turn")
    return TemplateLayout(name, "merged", _ROLES, merged, None, kwargs)


def _trims(content: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the ways a template may render `content`: whole first, then with its
    edge whitespace removed (fully, left only, right only, then partially)."""
    n = len(content)
    lead = n - len(content.lstrip())
    trail = n - len(content.rstrip()) if lead < n else 0
    seen = set()
    preferred = [(0, 0), (lead, trail), (lead, 0), (0, trail)]
    rest = ((a, b) for a in range(lead + 1) for b in range(trail + 1))
    for a, b in itertools.chain(preferred, rest):
        if (a, b) not in seen:
            seen.add((a, b))
            yield a, n - b


def _locate(text: str, segments: Sequence[str], contents: Sequence[str]) -> list[Span] | None:
    """Spans of `contents` in `text` = segments[0] + c0 + segments[1] + ... (anchored)."""
    if not text.startswith(segments[0]):
        return None

    def walk(pos: int, k: int) -> list[Span] | None:
        if k == len(contents):
            return [] if pos == len(text) else None
        for a, b in _trims(contents[k]):
            piece = contents[k][a:b]
            end = pos + len(piece)
            if text.startswith(piece, pos) and text.startswith(segments[k + 1], end):
                rest = walk(end + len(segments[k + 1]), k + 1)
                if rest is not None:
                    return [(pos, end), *rest]
        return None

    return walk(len(segments[0]), 0)


def render_with(
    tokenizer: PreTrainedTokenizerBase,
    layout: TemplateLayout,
    system: str | None,
    question: str,
    answer: str,
    *,
    sample_id: str = "",
) -> Rendered:
    """Render one conversation under a precomputed layout (see `analyze_template`)."""
    if (system is not None) != (layout.system_mode != "none"):
        raise InputError("the layout was analysed for a different system prompt presence")
    contents = (system, question, answer) if system is not None else (question, answer)
    text = _apply(tokenizer, _messages(system, question, answer, layout.system_mode), layout.template_kwargs)
    found = _locate(text, layout.segments, [c for c in contents if c is not None])
    if found is None:
        who = f"sample {sample_id!r}: " if sample_id else ""
        raise SpanError(
            f"{who}the chat template of {layout.template!r} rewrites this conversation beyond "
            "edge whitespace (for example a '</think>' inside the answer), so its contents "
            "cannot be located exactly; remove template markup from the texts"
        )
    if system is not None:
        spans = CharSpans(found[0], found[1], found[2])
    else:
        spans = CharSpans(layout.default_system, found[0], found[1], layout.default_system is not None)
    return Rendered(text, spans, layout.system_mode)


def render(
    tokenizer: PreTrainedTokenizerBase,
    system: str | None,
    question: str,
    answer: str,
    *,
    template_kwargs: Mapping[str, Any] | None = None,
) -> Rendered:
    """Render `(system, question, answer)` with the tokenizer's chat template and return the
    text with the exact character spans of the three contents (see the module docstring).

    `system=None` renders no system prompt (the baseline persona); `template_kwargs` go to
    `apply_chat_template` (for example `{"enable_thinking": False}`)."""
    _check_system(system)
    layout = analyze_template(tokenizer, has_system=system is not None, template_kwargs=template_kwargs)
    return render_with(tokenizer, layout, system, question, answer)


def _check_system(system: str | None) -> None:
    if system is not None and not system.strip():
        raise InputError("the system prompt is empty; pass system_prompt=None for no system prompt")


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
    _check_system(system_prompt)
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
