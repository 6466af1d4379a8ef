"""Drift monitoring: the projection of each turn of a conversation on an axis.

The whole conversation is rendered with the model's chat template and run once (the model
is causal, so each turn's activations see exactly the turns before it). A turn's value at
a layer is the mean over its content tokens of `h . v_hat`, the same pooling as an
`answer_mean` persona vector, so it compares with `persona_vector . v_hat` directly. (The
projections in `pvrs analyze` are taken after subtracting the mean of the role personas,
so they are offset from these by `role_mean . v_hat` at each layer.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pvrs.errors import InputError, ModelError, SpanError, TemplateError
from pvrs.jsonio import decode, decode_lines
from pvrs.steering.residuals import VectorLike, capture, layer_vectors, resolve_layers, unit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TurnProjection:
    """One turn: its position, role, a short preview, how many tokens were averaged, and
    the mean projection on the unit axis at each monitored layer."""

    turn: int
    role: str
    preview: str
    n_tokens: int
    projection: dict[int, float]


def load_conversation(path: str | Path) -> list[dict[str, str]]:
    """Messages `{role, content}` from a JSON list, a JSON object with `messages`, or JSONL
    with one message per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read conversation {path}: {exc.strerror}") from None
    try:
        data = decode(text, str(path))
    except InputError:
        try:
            data = decode_lines(text, str(path))
        except InputError as exc:
            raise InputError(
                f"neither JSON nor JSONL ({exc}); give a list of "
                '{"role": ..., "content": ...} messages'
            ) from None
    if isinstance(data, Mapping):
        data = data.get("messages")
    return check_messages(data, str(path))


def check_messages(data: object, where: str) -> list[dict[str, str]]:
    """`data` as a list of `{role, content}` messages, or one `InputError` naming `where`."""
    if not isinstance(data, list) or not data:
        raise InputError(
            f"{where}: expected a non-empty list of messages (or {{'messages': [...]}})"
        )
    messages = []
    for i, row in enumerate(data):
        if not isinstance(row, Mapping) or not isinstance(row.get("content"), str):
            raise InputError(f"{where}: message {i} needs a string 'content'")
        if row.get("role") not in ROLES:
            raise InputError(f"{where}: message {i} has role {row.get('role')!r}; use {ROLES}")
        messages.append({"role": str(row["role"]), "content": row["content"]})
    return messages


_SENTINEL = "PVRSTURN{}MARK"


def _content_spans(
    tokenizer: PreTrainedTokenizerBase, text: str, messages: Sequence[Mapping[str, str]]
) -> list[tuple[int, int]]:
    """Character span of each message's (stripped) content in the rendered `text`. The
    template is rendered once more with a sentinel in place of each content, which says
    where each turn's content goes, so text the template itself adds (a default system
    prompt, role headers) is never mistaken for a turn. Templates that rewrite content fall
    back to finding each content in order."""
    probe = tokenizer.apply_chat_template(
        [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)], tokenize=False
    )
    pieces, spans, cursor, offset = [], [], 0, 0  # offset: length of `pieces` joined
    for i, message in enumerate(messages):
        sentinel = _SENTINEL.format(i)
        at = probe.find(sentinel, cursor)
        if at < 0:
            return _spans_by_search(text, messages)
        content = message["content"]
        pieces += [probe[cursor:at], content]
        start = offset + (at - cursor) + len(content) - len(content.lstrip())
        spans.append((start, start + len(content.strip())))
        offset += (at - cursor) + len(content)
        cursor = at + len(sentinel)
    pieces.append(probe[cursor:])
    return spans if "".join(pieces) == text else _spans_by_search(text, messages)


def _spans_by_search(text: str, messages: Sequence[Mapping[str, str]]) -> list[tuple[int, int]]:
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message["content"].strip()
        start = text.find(content, cursor) if content else cursor
        if start < 0:
            raise SpanError(
                f"turn {i} ({message['role']}): its content does not appear verbatim in the "
                "rendered chat template; this template rewrites message text"
            )
        spans.append((start, start + len(content)))
        cursor = start + len(content)
    return spans


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """The conversation rendered with the chat template and tokenized: its token ids `(T,)`,
    their character offsets `(T, 2)`, and each message's content span in the rendered text."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("projecting turns needs a fast tokenizer (offset mappings)")
    from jinja2 import TemplateError as JinjaTemplateError

    try:
        text = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False)
    except (JinjaTemplateError, ValueError) as exc:  # templates raise_exception() on bad input
        raise TemplateError(
            f"the chat template rejects this conversation ({exc}); merge system prompts into "
            "the first user turn for templates without a system role"
        ) from None
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt"
    )
    return encoded["input_ids"][0], encoded["offset_mapping"][0], _content_spans(tokenizer, text, messages)


@torch.no_grad()
def turn_projections(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    axis: VectorLike,
    layers: int | Sequence[int],
) -> list[TurnProjection]:
    """Per turn, the mean projection of its content tokens on the unit axis, per layer.
    Empty turns get `n_tokens == 0` and NaN projections."""
    chosen = resolve_layers(model, layers)
    directions = {i: unit(v, "axis") for i, v in layer_vectors(model, axis, chosen, "axis").items()}
    input_ids, offsets, spans = encode_conversation(tokenizer, messages)
    device = next(model.parameters()).device
    with capture(model, chosen) as captured:
        model(input_ids=input_ids[None].to(device), use_cache=False)
    proj = {i: captured[i][0][0] @ directions[i] for i in chosen}
    out = []
    for turn, (message, (start, end)) in enumerate(zip(messages, spans, strict=True)):
        mask = (offsets[:, 0] < end) & (offsets[:, 1] > start)
        n = int(mask.sum())
        values = {i: float(proj[i][mask].mean()) if n else float("nan") for i in chosen}
        preview = " ".join(message["content"].split())
        out.append(
            TurnProjection(
                turn,
                message["role"],
                preview[:57] + "..." if len(preview) > 60 else preview,
                n,
                values,
            )
        )
    return out


def write_plot(turns: Sequence[TurnProjection], path: str | Path, title: str) -> Path:
    """A line per layer of projection against turn (HTML, or an image through kaleido when
    the extension is .png/.svg/.pdf)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    layers = sorted(turns[0].projection) if turns else []
    for layer in layers:
        figure.add_trace(
            go.Scatter(
                x=[t.turn for t in turns],
                y=[t.projection[layer] for t in turns],
                mode="lines+markers",
                name=f"layer {layer}",
                text=[f"{t.role}: {t.preview}" for t in turns],
                hovertemplate="turn %{x}<br>%{y:.3f}<br>%{text}<extra></extra>",
            )
        )
    figure.update_layout(title=title, xaxis_title="turn", yaxis_title="projection on axis")
    path = Path(path)
    if path.suffix.lower() in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        figure.write_image(str(path))
    else:
        # plotly.js inlined (as the analyze report does): a CDN link leaves the plot blank offline.
        figure.write_html(str(path), include_plotlyjs=True)
    return path
