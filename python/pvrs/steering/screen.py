"""Dataset screening: the projection of every conversation of a dataset on a direction, to
flag training data that would move a model toward a trait.

It lives in steering/ because it is `pvrs monitor` at dataset scale: a direction read on a
model's residual stream, not a computation over stored vectors (analysis/). Each conversation
is rendered with the chat template and tokenized as the monitor does; the extraction engine
then runs them in token-budget batches (one forward per conversation, every chosen layer at
once) and keeps each conversation's mean over its chosen tokens. Since the mean of `h . u` is
`mean(h) . u`, projecting those means on the unit direction gives each conversation's mean
projection exactly.

Tokens averaged (`tokens=`): `assistant` (default) every content token of every assistant
turn, what fine-tuning on the conversation trains on; `all` every token of the rendered
conversation, template included; `last` the last content token of the last assistant turn.

Projection difference (Chen et al. 2025, section 6): each conversation's projection minus the
projection of the same conversation with its last answer replaced by the model's own greedy
answer to that prompt: how much further along the direction the data pushes than what the model
says anyway. With it come the paper's per-row `prompt_last` columns: the projection and cosine
of the last prompt token (the assistant turn opened) with the direction."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.defaults import DEFAULT_BATCH_TOKENS
from pvrs.errors import InputError, MaskError

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.steering.residuals import VectorLike

TOKEN_CHOICES = ("assistant", "all", "last")
DEFAULT_TOKENS = "assistant"
# Per-sample means of one chunk held on the host at a time: the engine keeps (N, L', H) float32.
_CHUNK_BYTES = 1 << 28


@dataclass(frozen=True)
class Conversation:
    index: int  # row position in the dataset
    id: str  # the row's `id`, else its position
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class Screened:
    """`projections[n, j]` is conversation n's mean projection on the unit direction at
    `layers[j]`; `n_tokens[n]` how many tokens were averaged."""

    conversations: list[Conversation]
    layers: list[int]
    projections: np.ndarray  # (N, L') float64
    n_tokens: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Difference:
    """Per conversation and layer: `own` the projection with the model's own last answer,
    `difference` the data's projection minus it, `prompt_last` and `prompt_last_cosine` the
    last prompt token's projection on the unit direction and cosine with it."""

    own_answers: list[str]
    own: np.ndarray  # (N, L') float64
    difference: np.ndarray
    prompt_last: np.ndarray
    prompt_last_cosine: np.ndarray

    def dataset(self) -> np.ndarray:
        """The dataset's projection difference per layer: the mean over conversations."""
        return self.difference.mean(axis=0)


def read_conversations(path: str | Path, split: str | None = None) -> list[Conversation]:
    """Rows with a `messages` list (OpenAI chat format) from a .jsonl/.json/.parquet file or a
    folder saved by `datasets` (`save_to_disk`; `split` picks one of a DatasetDict)."""
    from pvrs.extraction.inputs import read_rows
    from pvrs.steering.monitor import check_messages

    source = Path(path)
    if split is not None and not source.is_dir():
        raise InputError(f"--split {split}: --data {source} is a file, which has no splits; drop --split")
    rows = _dataset_rows(source, split) if source.is_dir() else read_rows(source)
    if not rows:
        raise InputError(f"--data {source}: holds no rows")
    out = []
    for i, row in enumerate(rows):
        where = f"--data {source} row {i}"
        if not isinstance(row, Mapping) or "messages" not in row:
            raise InputError(f"{where}: no 'messages' field; each row needs a list of {{role, content}}")
        rid = row.get("id")
        out.append(Conversation(i, str(i) if rid is None else str(rid), check_messages(row["messages"], where)))
    return out


def _dataset_rows(root: Path, split: str | None) -> list[Any]:
    if not (root / "dataset_dict.json").is_file() and not (root / "dataset_info.json").is_file():
        raise InputError(f"--data {root}: not a dataset saved by datasets (save_to_disk); pass a .jsonl/.parquet file or such a folder")
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise InputError(f"--data {root}: reading a saved dataset needs the datasets package (pip install datasets)") from None

    data = load_from_disk(str(root))
    if isinstance(data, DatasetDict):
        names = list(data.keys())
        chosen = split or (names[0] if len(names) == 1 else None)
        if chosen not in data:
            raise InputError(f"--data {root}: pick a split with --split ({', '.join(names)})")
        data = data[chosen]
    elif split is not None:
        raise InputError(f"--split {split}: --data {root} is a single dataset with no splits; drop --split")
    return list(data)


def token_mask(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, tokens: str = DEFAULT_TOKENS
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `(T,)` of the rendered conversation and the bool mask `(T,)` of the tokens
    averaged (see the module docstring)."""
    from pvrs.steering.monitor import encode_conversation

    if tokens not in TOKEN_CHOICES:
        raise InputError(f"--tokens {tokens!r}: choose {', '.join(TOKEN_CHOICES)}")
    ids, offsets, spans = encode_conversation(tokenizer, conversation.messages)
    ids_np, offsets_np = ids.numpy(), offsets.numpy()
    if tokens == "all":
        return ids_np, np.ones(len(ids_np), dtype=bool)
    mask = np.zeros(len(ids_np), dtype=bool)
    for message, (start, end) in zip(conversation.messages, spans, strict=True):
        if message["role"] == "assistant":
            mask |= (offsets_np[:, 0] < end) & (offsets_np[:, 1] > start)
    if not mask.any():
        raise MaskError(
            f"conversation {conversation.id!r} (row {conversation.index}) has no assistant content "
            "to average; drop it or pass --tokens all"
        )
    if tokens == "last":
        last = np.flatnonzero(mask)[-1]
        mask[:] = False
        mask[last] = True
    return ids_np, mask


def screen(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    direction: VectorLike,
    layers: Sequence[int],
    *,
    tokens: str = DEFAULT_TOKENS,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    on_batch: Callable[[int, int], None] | None = None,
) -> Screened:
    """Every conversation's mean projection on the unit `direction` (a `(hidden,)` vector or
    one row per decoder block) at `layers`, through the extraction engine. `on_batch(n, t)`
    follows each engine batch (progress bars)."""
    import torch

    from pvrs.engines.transformers import EngineConfig, max_positions, sample_means
    from pvrs.steering.residuals import layer_vectors, resolve_layers, unit

    chosen = resolve_layers(model, list(layers))
    units = torch.stack([unit(v) for v in layer_vectors(model, direction, chosen, "direction").values()])
    prepared = [token_mask(tokenizer, c, tokens) for c in conversations]
    limit = max_positions(model)
    for c, (ids, _) in zip(conversations, prepared, strict=True):
        if limit is not None and len(ids) > limit:
            raise InputError(
                f"conversation {c.id!r} (row {c.index}) has {len(ids)} tokens; the model takes at most {limit}; "
                "drop or shorten it"
            )
    config = EngineConfig(layers=chosen, batch_tokens=batch_tokens)
    chunk = max(1, _CHUNK_BYTES // (4 * units.numel()))
    projections = np.zeros((len(prepared), len(chosen)), dtype=np.float64)
    n_tokens = np.zeros(len(prepared), dtype=np.int64)
    directions = units.double().numpy()
    for lo in range(0, len(prepared), chunk):
        part = prepared[lo : lo + chunk]
        result = sample_means(
            model, [ids for ids, _ in part], [mask for _, mask in part], config,
            sample_ids=[c.id for c in conversations[lo : lo + chunk]], on_batch=on_batch,
        )
        assert result.means is not None  # per_sample=True keeps them
        projections[lo : lo + len(part)] = np.einsum("nlh,lh->nl", result.means[:, 0].astype(np.float64), directions)
        n_tokens[lo : lo + len(part)] = result.counts[:, 0]
    return Screened(list(conversations), chosen, projections, n_tokens)


def prompt_of(conversation: Conversation) -> list[dict[str, str]]:
    """The turns before the last answer; the last message must be that answer."""
    messages = conversation.messages
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise InputError(
            f"conversation {conversation.id!r} (row {conversation.index}): the projection difference needs the last "
            "message to be the assistant's answer, after the prompt's turns"
        )
    return messages[:-1]


def projection_difference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: Screened,
    direction: VectorLike,
    *,
    tokens: str = DEFAULT_TOKENS,
    max_new_tokens: int = 64,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    on_answer: Callable[[int], None] | None = None,
    answers: Sequence[str] | None = None,
) -> Difference:
    """`data` (a `screen` result) against the model's own greedy answers to the same prompts,
    and the prompt-last columns. `on_answer(n)` follows the generation (progress bars).
    `answers`, one per row, are the own answers already generated (`vllm_answers`)."""
    import torch

    from pvrs.extraction.generate import SamplingConfig, generate, render
    from pvrs.steering.residuals import activations, layer_vectors, unit

    prompts = [prompt_of(c) for c in data.conversations]
    if answers is None:
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)  # greedy
        answers = []
        for prompt in prompts:
            answers.append(generate(model, tokenizer, prompt, sampling) or "…")  # an empty answer has no tokens
            if on_answer is not None:
                on_answer(1)
    elif len(answers) != len(prompts):
        raise InputError(f"{len(answers)} own answers for {len(prompts)} conversations; give one per conversation")
    own_conversations = [
        Conversation(c.index, c.id, [*prompt, {"role": "assistant", "content": answer}])
        for c, prompt, answer in zip(data.conversations, prompts, answers, strict=True)
    ]
    own = screen(model, tokenizer, own_conversations, direction, data.layers, tokens=tokens, batch_tokens=batch_tokens)
    units = torch.stack([unit(v) for v in layer_vectors(model, direction, data.layers, "direction").values()]).double()
    texts = [tokenizer(render(tokenizer, p), add_special_tokens=False, return_tensors="pt")["input_ids"][0] for p in prompts]
    last = np.zeros_like(data.projections)
    cosine = np.zeros_like(data.projections)
    for n, acts in enumerate(activations(model, None, texts, data.layers)):
        hidden = torch.stack([acts[layer][-1] for layer in data.layers]).double()
        last[n] = (hidden * units).sum(-1).numpy()
        cosine[n] = last[n] / torch.linalg.vector_norm(hidden, dim=-1).clamp_min(1e-30).numpy()
    return Difference(list(answers), own.projections, data.projections - own.projections, last, cosine)


def vllm_answers(
    config: VllmConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    max_new_tokens: int = 64,
    on_answer: Callable[[int], object] | None = None,
) -> list[str]:
    """The model's own greedy answers to the conversations' prompts (`prompt_of`), generated by
    vLLM in one engine run, in order; `model` may be a weightless `skeleton`. The engine answers
    personas' questions, so every prompt goes in as a question of one job without a persona,
    rendered as `generate` renders it."""
    from contextlib import closing

    from pvrs.engines.jobs import BASELINE_ID, AnswerJob, Persona, QAPair, SamplingConfig
    from pvrs.engines.vllm_engine import VllmEngine
    from pvrs.extraction.generate import render

    prompts = [render(tokenizer, prompt_of(c)) for c in conversations]
    job = AnswerJob(Persona(BASELINE_ID, "own answers"), "templated", [QAPair(c.id, "", "") for c in conversations],
                    prompts, None, {})
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)  # greedy
    with closing(VllmEngine(config, model, tokenizer, [])) as engine:
        ((_, rows),) = engine.answer([job], sampling, on_answer or (lambda n: None))
    assert not isinstance(rows, str)  # the vLLM engine yields rows, never a failure text
    return [r.answer for r in rows]


def table(result: Screened, difference: Difference | None = None) -> Any:
    """The per-sample table (pyarrow): `index`, `id`, `n_tokens`, then `layer_<i>` per layer;
    with a `difference`, per layer `own_<i>`, `difference_<i>`, `prompt_last_<i>`,
    `prompt_last_cos_<i>` and the `own_answer` text."""
    import pyarrow as pa

    columns: dict[str, Any] = {
        "index": pa.array([c.index for c in result.conversations], pa.int64()),
        "id": pa.array([c.id for c in result.conversations], pa.string()),
        "n_tokens": pa.array(result.n_tokens, pa.int64()),
    }
    for j, layer in enumerate(result.layers):
        columns[f"layer_{layer}"] = pa.array(result.projections[:, j], pa.float64())
    if difference is not None:
        for name, values in (("own", difference.own), ("difference", difference.difference),
                             ("prompt_last", difference.prompt_last), ("prompt_last_cos", difference.prompt_last_cosine)):
            for j, layer in enumerate(result.layers):
                columns[f"{name}_{layer}"] = pa.array(values[:, j], pa.float64())
        columns["own_answer"] = pa.array(difference.own_answers, pa.string())
    return pa.table(columns)


def dataset_table(result: Screened, vector: str, difference: Difference | None = None) -> Any:
    """The dataset's means (pyarrow), one row per layer: `vector`, `layer`, `conversations`,
    `projection` (the mean over rows); with a `difference`, the means of `own`, `difference`
    (the dataset's projection difference), `prompt_last` and `prompt_last_cos`."""
    import pyarrow as pa

    columns: dict[str, Any] = {
        "vector": pa.array([vector] * len(result.layers), pa.string()),
        "layer": pa.array(result.layers, pa.int64()),
        "conversations": pa.array([len(result.conversations)] * len(result.layers), pa.int64()),
        "projection": pa.array(result.projections.mean(axis=0), pa.float64()),
    }
    if difference is not None:
        for name, values in (("own", difference.own), ("difference", difference.difference),
                             ("prompt_last", difference.prompt_last), ("prompt_last_cos", difference.prompt_last_cosine)):
            columns[name] = pa.array(values.mean(axis=0), pa.float64())
    return pa.table(columns)


def write_tables(result: Screened, directory: Path, vector: str, difference: Difference | None = None) -> list[Path]:
    """`projections.parquet` and `projections.csv` (per row) and `dataset.csv` (the dataset's
    means per layer) in `directory`, each written atomically."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pvrs.store import atomic_write_bytes

    data = table(result, difference)
    directory.mkdir(parents=True, exist_ok=True)
    parquet, csv, means = io.BytesIO(), io.BytesIO(), io.BytesIO()
    pq.write_table(data, parquet)
    pacsv.write_csv(data, csv)
    pacsv.write_csv(dataset_table(result, vector, difference), means)
    paths = [directory / "projections.parquet", directory / "projections.csv", directory / "dataset.csv"]
    for path, buffer in zip(paths, (parquet, csv, means), strict=True):
        atomic_write_bytes(path, buffer.getvalue())
    return paths


def histogram(result: Screened, title: str, values: np.ndarray | None = None,
              xaxis_title: str = "mean projection on the unit direction") -> go.Figure:
    """One overlaid histogram of the per-sample projections (or `values`, `(N, L')`) per layer."""
    import plotly.graph_objects as go

    shown = result.projections if values is None else values
    figure = go.Figure()
    for j, layer in enumerate(result.layers):
        figure.add_trace(go.Histogram(x=shown[:, j], name=f"layer {layer}", opacity=0.6))
    figure.update_layout(title=title, barmode="overlay", xaxis_title=xaxis_title,
                         yaxis_title="conversations", width=900, height=500)
    return figure
