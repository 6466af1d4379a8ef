"""Rendering conversations with a model's chat template and locating each content's exact
character span in the rendering.

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
  `persona_*` strategy raises `MaskError` (`pvrs.extraction.chat.prepare_inputs`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pvrs.errors import InputError, SpanError, TemplateError

if TYPE_CHECKING:
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
    check_system(system)
    layout = analyze_template(tokenizer, has_system=system is not None, template_kwargs=template_kwargs)
    return render_with(tokenizer, layout, system, question, answer)


def check_system(system: str | None) -> None:
    """`InputError` for an empty system prompt (None, not "", means no system prompt)."""
    if system is not None and not system.strip():
        raise InputError("the system prompt is empty; pass system_prompt=None for no system prompt")

