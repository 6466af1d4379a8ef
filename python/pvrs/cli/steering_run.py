"""Bodies of the steering commands (`pvrs steer`, `chat`, `monitor`, `export`, `contrast`): resolving
vector specs and layers, running the model, and printing rich tables. `pvrs.cli.main` only
declares their arguments."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.cli.common import check_writable, magnitude, vllm_config, writing
from pvrs.errors import InputError, InvalidArgumentError
from pvrs.extraction.inputs import read_rows
from pvrs.store.layerspec import parse_layers

if TYPE_CHECKING:
    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.judge.evaluation import BatchAnswerer, Request


def vector_layers(spec: Sequence[str], vector: np.ndarray, flag: str = "--layer") -> list[int]:
    """`--layer` items for `vector`: a `(L, H)` vector bounds them (and resolves `-1`)."""
    if vector.ndim != 2:
        return parse_layers(spec, None, flag)
    try:
        return parse_layers(spec, range(vector.shape[0]), flag)
    except InputError as exc:
        # A vector file of the wrong model shows as a missing layer: name its shape.
        raise InputError(f"{exc}; the vector has shape {tuple(vector.shape)} (layers, hidden size)") from None


def open_store(args: argparse.Namespace) -> Any:
    from pvrs.engines.models import canonical_model_name
    from pvrs.hub.vector_sources import open_store as open_source

    return open_source(canonical_model_name(args.model), args.source, args.mask_strategy)


def resolve_vector(spec: str, args: argparse.Namespace) -> np.ndarray:
    """A file or vector folder, `assistant-axis`, `biography:ID`, or a persona id (minus the
    baseline) from the store."""
    from pvrs.steering.directions import from_spec

    return from_spec(spec, open_store(args), variant=args.variant)


def load_model(args: argparse.Namespace, vllm: VllmConfig | None = None) -> tuple[Any, Any]:
    """The model and its tokenizer; with `vllm`, the weightless skeleton (vLLM holds the
    weights; the skeleton renders and names the dtype vLLM loads)."""
    from rich.console import Console

    from pvrs.engines.models import load, skeleton

    if vllm is not None:
        import torch

        return skeleton(vllm.model, on_gpu=torch.cuda.is_available())
    with Console(stderr=True).status(f"loading {args.model}"):
        return load(args.model, dtype=args.dtype, device=args.device)


def model_dtype(model: Any) -> str:
    """The dtype of `model`'s weights as pvrs names it (`float32`): the one vLLM loads."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def vllm_answerer(
    config: VllmConfig, vectors: dict[str, np.ndarray], tokenizer: Any, sampling: Any, dtype: str
) -> BatchAnswerer:
    """Answers every request in one batch on a steerable vLLM with `vectors` registered (its
    specs name them), started for the batch and shut down after it."""

    def answer(requests: Sequence[Request]) -> list[str]:
        from pvrs.engines.vllm_answers import steerable

        with steerable(config, vectors, dtype) as llm:
            return answer_requests(llm, tokenizer, requests, sampling)

    return answer


def answer_requests(llm: Any, tokenizer: Any, requests: Sequence[Request], sampling: Any) -> list[str]:
    """The answers of a started steerable vLLM to `requests`, rendered as `generate` renders
    a system prompt and a question, in one batch."""
    from pvrs.engines.vllm_answers import steered_answers
    from pvrs.extraction.generate import prompt_messages, render

    prompts = [render(tokenizer, prompt_messages(tokenizer, system, prompt)) for system, prompt, _ in requests]
    return steered_answers(llm, tokenizer, prompts, [spec for _, _, spec in requests], sampling)


def read_prompts(args: argparse.Namespace, flag: str = "--prompts") -> list[str]:
    """`--prompt` (repeatable), else `--prompts FILE` (one per line, or JSON/JSONL rows with
    a `question` or `prompt` field), else three of the built-in neutral prompts. `flag` names
    the file's option in errors."""
    from pvrs.extraction.generate import DEFAULT_PROMPTS

    if args.prompt:
        return list(args.prompt)
    if args.prompts is None:
        return list(DEFAULT_PROMPTS[:3])
    path = Path(args.prompts)
    if path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        rows = read_rows(path, objects=False)
        prompts = [r if isinstance(r, str) else (r.get("question") or r.get("prompt")) if isinstance(r, dict) else None
                   for r in rows]
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InputError(
                f"{flag} {path}: every row needs a non-empty 'question' or 'prompt'"
            )
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {flag} {path}: {exc.strerror}") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{flag} {path} holds no prompts")
    return prompts


def _generation_config(args: argparse.Namespace) -> Any:
    from pvrs.extraction.generate import SamplingConfig

    return SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)


def _print_json(payload: object) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False))


# ---- steer ---------------------------------------------------------------------------------


def run_steer(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from pvrs.extraction.generate import generate, prompt_messages
    from pvrs.steering.interventions import band, steer, suggested_alphas
    from pvrs.steering.residuals import warn_overpowering

    if (args.persona_id is None) == (args.vector is None):
        raise InputError("give exactly one of --persona-id ID or --vector FILE")
    if args.relative and args.band_scale == "norm":
        raise InputError("--relative already scales each layer by its residual norm; drop --band-scale norm")
    prompts = read_prompts(args)
    config = _generation_config(args)
    vllm = vllm_config(args)
    vector = resolve_vector(args.persona_id or args.vector, args)
    layers = vector_layers(args.layer, vector)
    # With --relative each alpha is a fraction of the layer's typical residual norm, which
    # transformers measures (on vLLM too, before vLLM starts).
    model, tokenizer = load_model(args, None if args.relative or args.band_scale == "norm" else vllm)
    unit_alphas = suggested_alphas(model, tokenizer, vector, layers, 1.0) if args.relative else None
    shares = band(model, tokenizer, layers, 1.0, args.band_scale)  # 1 at every layer unless norm
    columns: list[tuple[str, dict[int, float] | None]] = [("unsteered", None)]
    for a in args.alpha:
        if unit_alphas is None:
            per_layer = {i: a * share for i, share in shares.items()}
            shown = ", ".join(f"{v:.3g}" for v in per_layer.values())
            by_norm = f" (by norm: {shown})" if len(set(per_layer.values())) > 1 else ""
            columns.append((f"alpha {a:g}{by_norm}", per_layer))
        else:
            scaled = {i: a * u for i, u in unit_alphas.items()}
            shown = ", ".join(f"{v:.3g}" for v in scaled.values())
            columns.append((f"{a:g} x norm (alpha {shown})", scaled))
    if vllm is None or args.relative:  # it measures residual norms with transformers
        warn_overpowering(model, tokenizer, vector, [alpha for _, alpha in columns if alpha is not None])
    rows: list[dict[str, Any]] = []
    if vllm is not None:
        # Every prompt x column in one batch, each request with its own spec; the transformers
        # model of --relative is freed first (vLLM takes most of a GPU).
        dtype, model = model_dtype(model), None
        specs = [None if a is None else [{"kind": "add", "vector": "direction", "layers": layers,
                                          "coef": [a[i] for i in layers], "positions": args.positions,
                                          **({} if args.schedule == "constant" else {"schedule": args.schedule})}]
                 for _, a in columns]
        with Console(stderr=True).status(f"{len(prompts) * len(specs)} replies on vLLM, one batch"):
            answers = vllm_answerer(vllm, {"direction": vector}, tokenizer, config, dtype)(
                [(args.system, prompt, spec) for prompt in prompts for spec in specs])
        rows = [{"prompt": prompt, "outputs": {label: answers[p * len(columns) + c] for c, (label, _) in enumerate(columns)}}
                for p, prompt in enumerate(prompts)]
    else:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("generating", total=len(prompts) * len(columns))
            for prompt in prompts:
                messages = prompt_messages(tokenizer, args.system, prompt)
                outputs = {}
                for label, alpha in columns:
                    intervention = (
                        nullcontext()
                        if alpha is None
                        else steer(model, vector, layers, alpha=alpha, positions=args.positions, schedule=args.schedule)
                    )
                    with intervention:
                        outputs[label] = generate(model, tokenizer, messages, config)
                    progress.advance(task)
                rows.append({"prompt": prompt, "outputs": outputs})
    if args.json:
        alphas = {c: {str(i): v for i, v in a.items()} if a else None for c, a in columns}
        _print_json(
            {"layers": layers, "schedule": args.schedule, "columns": [c for c, _ in columns], "alphas": alphas,
             "rows": rows}
        )
        return 0
    table = Table(
        title=f"steering {args.persona_id or args.vector} at layers {layers}"
        + ("" if args.schedule == "constant" else f", schedule {args.schedule}"),
        show_lines=True,
    )
    table.add_column("prompt", style="bold", max_width=30)
    for label, _ in columns:
        table.add_column(label)
    for row in rows:
        table.add_row(row["prompt"], *(row["outputs"][label] for label, _ in columns))
    Console().print(table)
    return 0


# ---- chat ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InterventionSpec:
    vector: str
    layers: str  # a layer or a band, as typed: 12, -1, 10-14
    value: float | None  # alpha for --steer, tau for --cap (None: calibrate)
    side: str | None = None  # a cap's side when fixed by its source (None: --cap-side)


# The LAYER of a spec: one block (12, -1) or an inclusive range (10-14); checked by parse_layers.
_LAYERS = re.compile(r"-?\d+(?:--?\d+)?")


def parse_intervention(text: str, flag: str, value_required: bool) -> InterventionSpec:
    """`VECTOR:LAYER:VALUE` (VALUE optional for --cap); LAYER may be a range (`10-14`).
    VECTOR may itself contain colons."""
    parts = text.rsplit(":", 2)
    form = "VECTOR:LAYER:ALPHA" if value_required else "VECTOR:LAYER[:TAU]"
    try:
        if len(parts) == 3 and _LAYERS.fullmatch(parts[1]):
            return InterventionSpec(parts[0], parts[1], magnitude(parts[2]))
        if len(parts) == 2 and not value_required and _LAYERS.fullmatch(parts[1]):
            return InterventionSpec(parts[0], parts[1], None)
    except argparse.ArgumentTypeError as exc:  # bounded as the --alpha and --tau flags are
        raise InputError(f"{flag} {text!r}: {exc}; give {form}") from None
    raise InputError(f"{flag} {text!r} is not {form} (e.g. pirate_captain:12:4 or pirate_captain:10-14:4)")


def parse_steer(text: str) -> InterventionSpec:
    """`VECTOR:LAYER:ALPHA` or `VECTOR@LAYER:ALPHA` (the vLLM spec's shorthand; LAYER may be a
    band, `10-14`), or a reference vector folder (or its steering_vector.safetensors) alone or
    with `:LAYER[:ALPHA]`, the rest taken from its metadata.json."""
    from pvrs.steering.published import read_steering_vector
    from pvrs.store.vectorfiles import STEERING_VECTOR_FILE, is_vector_folder

    vector, at, rest = text.rpartition("@")
    layers, colon, alpha = rest.partition(":")
    if at and vector and colon and _LAYERS.fullmatch(layers):
        try:
            return InterventionSpec(vector, layers, magnitude(alpha))
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"--steer {text!r}: {exc}; give VECTOR@LAYER:ALPHA") from None

    candidates: list[tuple[str, list[str]]] = [(text, [])]
    if ":" in text:
        head, tail = text.rsplit(":", 1)
        candidates.append((head, [tail]))
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        candidates.append((parts[0], parts[1:]))
    for vector, fields in candidates:
        path = Path(vector)
        if not (is_vector_folder(path) or (path.is_file() and path.name == STEERING_VECTOR_FILE)):
            continue
        published = read_steering_vector(path)
        if fields and not _LAYERS.fullmatch(fields[0]):
            break
        layer = fields[0] if fields else published.layer
        try:
            alpha = magnitude(fields[1]) if len(fields) > 1 else published.alpha
        except argparse.ArgumentTypeError:
            break
        if layer is None or alpha is None:
            raise InputError(
                f"--steer {text!r}: {path}'s metadata.json names no "
                f"{'layer' if layer is None else 'alpha'}; give {vector}:LAYER:ALPHA"
            )
        return InterventionSpec(vector, str(layer), alpha)
    return parse_intervention(text, "--steer", value_required=True)


@dataclass(frozen=True)
class ResolvedIntervention:
    spec: InterventionSpec
    vector: np.ndarray


def resolve_caps(text: str, args: argparse.Namespace) -> list[ResolvedIntervention]:
    """One `--cap`: `VECTOR:LAYER[:TAU]`, or an assistant-axis capping config
    `CONFIG.pt[:EXPERIMENT]`, whose every cap applies as published (upper caps at their
    layers and thresholds)."""
    from pvrs.steering.published import capping_experiment, split_capping_spec

    config = split_capping_spec(text)
    if config is None:
        spec = parse_intervention(text, "--cap", value_required=False)
        return [ResolvedIntervention(spec, resolve_vector(spec.vector, args))]
    path, experiment = config
    return [
        ResolvedIntervention(InterventionSpec(f"{text}/{c.name}", str(c.layer), c.tau, "upper"), c.vector)
        for c in capping_experiment(path, experiment)
    ]


def resolve_interventions(
    args: argparse.Namespace,
) -> tuple[list[ResolvedIntervention], list[ResolvedIntervention]]:
    """Parse and load every `--steer` and `--cap` before the model loads, so a typo fails fast
    (also a layer a `(L, H)` vector does not have)."""
    steers = [parse_steer(t) for t in args.steer or []]
    resolved = (
        [ResolvedIntervention(s, resolve_vector(s.vector, args)) for s in steers],
        [item for text in args.cap or [] for item in resolve_caps(text, args)],
    )
    for flag, items in zip(("--steer", "--cap"), resolved, strict=True):
        for item in items:
            if item.vector.ndim == 2:
                vector_layers([item.spec.layers], item.vector, flag)
    return resolved


def _where(layers: Sequence[int]) -> str:
    """`layer 3`, `layers 10-14`, or `layers [1, 3]`."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return f"layers {list(layers)}"


def _values(values: dict[int, float], form: str) -> str:
    """One number when every layer has the same, else one per layer."""
    distinct = set(values.values())
    return format(distinct.pop(), form) if len(distinct) == 1 else ", ".join(format(v, form) for v in values.values())


@contextmanager
def interventions(
    model: Any,
    tokenizer: Any,
    args: argparse.Namespace,
    steers: Sequence[ResolvedIntervention],
    caps: Sequence[ResolvedIntervention],
) -> Iterator[list[str]]:
    """Enter every steer and cap; yields one description per intervention. A steer over a
    band of layers gets its per-layer alphas from `--band-scale`, and `--schedule` over
    generation steps. A cap without TAU is calibrated on the built-in neutral prompts at
    `--cap-quantile`, before any intervention is active: a floor set inside the steered
    distribution would hold nothing."""
    from pvrs.engines.hooks import decoder_layers
    from pvrs.extraction.generate import DEFAULT_PROMPTS, as_chat
    from pvrs.steering.interventions import band, cap, default_cap_quantile, steer
    from pvrs.steering.residuals import calibrate_tau

    quantile = args.cap_quantile if args.cap_quantile is not None else default_cap_quantile(args.cap_side)
    blocks = range(len(decoder_layers(model)))

    def layers_of(item: ResolvedIntervention, flag: str) -> list[int]:
        return parse_layers([item.spec.layers], blocks, flag)  # `-1` is the last block

    steer_layers = [layers_of(item, "--steer") for item in steers]
    cap_layers = [layers_of(item, "--cap") for item in caps]
    prompts = [as_chat(p) for p in DEFAULT_PROMPTS]
    # Like a calibrated tau, a band's norms are measured before any intervention is active.
    steer_alphas = [
        band(model, tokenizer, layers, float(item.spec.value or 0.0), args.band_scale)
        for item, layers in zip(steers, steer_layers, strict=True)
    ]
    taus = [
        dict.fromkeys(layers, item.spec.value)
        if item.spec.value is not None
        else calibrate_tau(model, tokenizer, item.vector, layers, prompts, quantile)
        for item, layers in zip(caps, cap_layers, strict=True)
    ]
    scheduled = "" if args.schedule == "constant" else f", schedule {args.schedule}"
    described = []
    with ExitStack() as stack:
        for item, layers, alphas in zip(steers, steer_layers, steer_alphas, strict=True):
            stack.enter_context(steer(model, item.vector, layers, alpha=alphas, schedule=args.schedule))
            described.append(f"steer {item.spec.vector} at {_where(layers)}, alpha {_values(alphas, 'g')}{scheduled}")
        for item, layers, tau in zip(caps, cap_layers, taus, strict=True):
            side = item.spec.side or args.cap_side
            stack.enter_context(cap(model, item.vector, layers, tau, side=side))
            described.append(f"cap ({side}) {item.spec.vector} at {_where(layers)}, tau {_values(tau, '.3f')}")
        yield described


def run_chat(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pvrs.extraction.generate import generate, prompt_messages

    config = _generation_config(args)
    steers, caps = resolve_interventions(args)
    model, tokenizer = load_model(args)
    err = Console(stderr=True)
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = []  # user and assistant turns

    def conversation() -> list[dict[str, str]]:
        # The system prompt goes where the template wants it (merged into the first user
        # turn for templates without a system role).
        return [*prompt_messages(tokenizer, args.system, history[0]["content"]), *history[1:]]

    with interventions(model, tokenizer, args, steers, caps) as described:
        for line in described:
            err.print(f"[dim]{line}[/dim]")
        if interactive:
            err.print("[dim]type a message; /reset clears the history, /exit or Ctrl-D quits[/dim]")
        while True:
            if interactive:
                err.print("[bold]you>[/bold] ", end="")
            line = sys.stdin.readline()
            if not line:
                break
            message = line.strip()
            if not message:
                continue
            if message == "/exit":
                break
            if message == "/reset":
                history.clear()
                continue
            history.append({"role": "user", "content": message})
            reply = generate(model, tokenizer, conversation(), config)
            history.append({"role": "assistant", "content": reply})
            print(f"assistant> {reply}", flush=True)
    return 0


# ---- monitor -------------------------------------------------------------------------------


def run_monitor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pvrs.engines.hooks import decoder_layers
    from pvrs.steering.monitor import load_conversation, turn_projections, write_plot

    messages = load_conversation(args.conversation)
    axis = resolve_vector(args.axis, args)
    requested = vector_layers(args.layer, axis) if args.layer else None
    target = None
    if not args.no_plot:
        try:
            import plotly  # noqa: F401
        except ImportError:
            Console(stderr=True).print("[dim]plotly is not installed; skipping the plot[/dim]")
        else:
            target = args.plot or Path(args.conversation).with_suffix(".monitor.html")
            check_writable("--plot", target)
    model, tokenizer = load_model(args)
    layers = requested or [len(decoder_layers(model)) // 2]
    turns = turn_projections(model, tokenizer, messages, axis, layers)
    plot_path = None
    if target is not None:
        with writing(target):
            plot_path = write_plot(turns, target, f"projection on {args.axis}")
    if args.json:
        _print_json(
            {
                "axis": args.axis,
                "layers": layers,
                "plot": str(plot_path) if plot_path else None,
                "turns": [
                    {
                        "turn": t.turn,
                        "role": t.role,
                        "n_tokens": t.n_tokens,
                        "projection": {str(k): v for k, v in t.projection.items()},
                    }
                    for t in turns
                ],
            }
        )
        return 0
    table = Table(title=f"projection of each turn on {args.axis}")
    for name in ("turn", "role", "tokens"):
        table.add_column(name, justify="right" if name != "role" else "left")
    for layer in layers:
        table.add_column(f"layer {layer}", justify="right")
    table.add_column("text", max_width=50)
    for t in turns:
        values = [f"{t.projection[layer]:+.3f}" if t.n_tokens else "-" for layer in layers]
        table.add_row(str(t.turn), t.role, str(t.n_tokens), *values, t.preview)
    console = Console()
    console.print(table)
    if plot_path is not None:
        console.print(f"plot: {plot_path}")
    return 0


# ---- export --------------------------------------------------------------------------------


def _model_hint(model: str) -> str:
    """The architecture name llama.cpp prints for the model (`model_type` of its config)."""
    from transformers import AutoConfig

    from pvrs.engines.models import resolve_model_path
    from pvrs.errors import ModelError

    try:
        return str(AutoConfig.from_pretrained(resolve_model_path(model)).model_type)
    except (OSError, ValueError, ModelError) as exc:
        raise InputError(
            f"cannot read the config of {model!r} for the GGUF model hint ({exc}); pass --model-hint"
        ) from None


def run_export(args: argparse.Namespace) -> int:
    from pvrs.store.controlvector import write_control_vector

    if args.format != "gguf":
        raise InvalidArgumentError(f"--format {args.format!r} is not supported; use gguf")
    if (args.persona_id is None) == (args.vector is None):
        raise InputError("give exactly one of --persona-id ID or --vector FILE")
    check_writable("--out", args.out)
    vector = resolve_vector(args.persona_id or args.vector, args)
    layers = vector_layers(args.layer, vector)
    hint = args.model_hint or _model_hint(args.model)
    path = write_control_vector(vector, args.out, layers, scale=args.alpha, model_hint=hint)
    print(
        f"wrote {path}: {len(layers)} direction(s) at layers {layers}, scale {args.alpha:g}, "
        f"model hint {hint!r}; use it with llama.cpp --control-vector {path}"
    )
    return 0


# ---- contrast ------------------------------------------------------------------------------


def run_contrast(args: argparse.Namespace) -> int:
    from pvrs.engines.models import canonical_model_name
    from pvrs.extraction.masks import parse_strategies
    from pvrs.steering.contrast import FORMAT, contrast_vector, load_responses, save_vector
    from pvrs.store import LAYER_CONVENTION, POOLING

    (strategy,) = parse_strategies(args.mask_strategy)
    positive = load_responses(args.positive)
    negative = load_responses(args.negative)
    check_writable("--out", args.out)
    model, tokenizer = load_model(args)
    vector = contrast_vector(model, tokenizer, positive, negative, strategy)
    metadata = {
        "format": FORMAT,
        "model": canonical_model_name(args.model),
        "mask_strategy": strategy.value,
        "layer_convention": LAYER_CONVENTION,
        "pooling": POOLING,
        "n_positive": len(positive),
        "n_negative": len(negative),
    }
    with writing(args.out):
        path = save_vector(args.out, vector, metadata)
    norms = np.linalg.norm(vector, axis=1)
    print(
        f"wrote {path}: ({vector.shape[0]}, {vector.shape[1]}) from {len(positive)} positive and "
        f"{len(negative)} negative responses; largest norm at layer {int(norms.argmax())} "
        f"({norms.max():.3g}). Steer with: pvrs steer --vector {path} --layer L --alpha A"
    )
    return 0
