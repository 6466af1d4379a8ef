"""The steering commands' flags: `pvrs steer`, `chat`, `monitor`, `export` and `contrast`
(their bodies are in `pvrs.cli.steering_run`)."""

from __future__ import annotations

import argparse

from pvrs.cli.common import (
    add_engine_args,
    add_generation_args,
    add_model_and_store_args,
    add_model_args,
    float_in,
    magnitude,
)
from pvrs.errors import InvalidArgumentError


def schedule_arg(text: str) -> str:
    """A `--schedule` value (`constant`, `linear:N`, `first:N`), checked as the flag is read."""
    from pvrs.engines.schedule import Schedule

    try:
        return str(Schedule.parse(text))
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_band_schedule_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--band-scale` and `--schedule`, shared by `steer`, `chat`, `eval` and `trait`."""
    p.add_argument(
        "--band-scale", choices=("uniform", "norm"), default="uniform",
        help="alphas over a band of several layers steered together: the same at each (uniform), or "
        "in proportion to each layer's median residual norm, averaging the given alpha (default %(default)s)",
    )
    p.add_argument(
        "--schedule", type=schedule_arg, default="constant", metavar="constant|linear:N|first:N",
        help="steering strength by generation step: constant, fading linearly to zero over N "
        "generated tokens, or the first N generated tokens only (default %(default)s)",
    )


def _cmd_steer(args: argparse.Namespace) -> int:
    from pvrs.cli.steering_run import run_steer

    return run_steer(args)


def _add_steer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "steer",
        help="generate with and without steering, side by side",
        description="Generate replies with a persona direction (persona minus baseline) or a "
        "vector file added at the chosen layers, next to the unsteered reply.",
    )
    add_model_and_store_args(p)
    p.add_argument("--persona-id", help="steer towards this stored persona (minus the baseline)")
    p.add_argument(
        "--vector",
        help="or: a vector file (.safetensors/.npy/.pt/.gguf), a reference vector folder, "
        "'assistant-axis' or 'biography:ID' (biography minus templated)",
    )
    p.add_argument(
        "--layer", nargs="+", required=True,
        help="block indices or ranges (12 or 10-14), steered together (a band: see --band-scale)",
    )
    p.add_argument(
        "--alpha", nargs="+", type=magnitude, required=True, help="one or more strengths to sweep"
    )
    p.add_argument(
        "--relative",
        action="store_true",
        help="read each alpha as a fraction of the layer's median residual norm (start at 0.4)",
    )
    p.add_argument(
        "--positions",
        choices=("all", "prompt", "generated", "response"),
        default="all",
        help="tokens steered: all, the prompt's, the generated ones, or response: the last prompt token and every "
        "generated one (persona_vectors' positions='response') (default %(default)s)",
    )
    add_band_schedule_args(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", action="append", help="a user prompt (repeatable)")
    group.add_argument(
        "--prompts", help="file of prompts: one per line, or JSON/JSONL with 'question'"
    )
    add_generation_args(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_engine_args(p, "the replies (vLLM: every prompt and alpha in one batch, always eager)")
    p.set_defaults(handler=_cmd_steer)


def _cmd_chat(args: argparse.Namespace) -> int:
    from pvrs.cli.steering_run import run_chat

    return run_chat(args)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat with steering and capping (reads stdin, one message per line)",
        description="Chat with the model while persona directions are added (--steer) or the "
        "projection on them is capped (--cap). Reads one message per line from stdin; /reset "
        "clears the history, /exit or end of input quits.",
    )
    add_model_and_store_args(p)
    p.add_argument(
        "--steer",
        action="append",
        metavar="VECTOR:LAYER:ALPHA",
        help="add ALPHA x VECTOR (persona id, biography:ID, vector file, assistant-axis) at LAYER, or "
        "over a band of layers (VECTOR:10-14:ALPHA, also written VECTOR@10-14:ALPHA); "
        "a reference vector folder may omit LAYER and ALPHA (default: its metadata.json's); repeatable",
    )
    p.add_argument(
        "--cap",
        action="append",
        metavar="VECTOR:LAYER[:TAU]",
        help="cap the projection on VECTOR at LAYER to TAU (default: calibrated), or apply an "
        "assistant-axis capping config as published: CONFIG.pt:EXPERIMENT (e.g. "
        "capping_config.pt:layers_46:54-p0.25); repeatable",
    )
    p.add_argument(
        "--cap-side",
        choices=("upper", "lower"),
        default="upper",
        help="upper (default): projections <= tau; lower: a floor (use with assistant-axis); "
        "capping configs keep their upper caps",
    )
    p.add_argument(
        "--cap-quantile",
        type=float_in(0, 1),
        default=None,
        help="quantile for a calibrated tau (default 0.99 upper, 0.01 lower)",
    )
    add_band_schedule_args(p)
    add_generation_args(p)
    p.set_defaults(handler=_cmd_chat)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pvrs.cli.steering_run import run_monitor

    return run_monitor(args)


def _add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="projection of each conversation turn on an axis (drift)",
        description="Run a conversation through the model and print, per turn, the mean "
        "projection of its content tokens on an axis (a persona direction, a vector file or "
        "the assistant axis) at the chosen layers, with an optional plot.",
    )
    add_model_and_store_args(p)
    p.add_argument("--axis", required=True, help="persona id, vector file or assistant-axis")
    p.add_argument("--conversation", required=True, help="JSON/JSONL list of {role, content}")
    p.add_argument("--layer", nargs="+", help="layers to monitor (default: the middle block)")
    p.add_argument(
        "--plot",
        help="plot file (.html, or .png/.svg via kaleido); default <conversation>.monitor.html",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write a plot")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_monitor)


def _cmd_export(args: argparse.Namespace) -> int:
    from pvrs.cli.steering_run import run_export

    return run_export(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a llama.cpp control-vector GGUF",
        description="Write a stored persona direction (persona minus baseline), the assistant "
        "axis or a vector file as a llama.cpp control vector (--control-vector).",
    )
    add_model_and_store_args(p)
    p.add_argument("--format", default="gguf", choices=("gguf",), help="file format (default %(default)s)")
    p.add_argument(
        "--persona-id", help="export this stored persona's direction (minus the baseline)"
    )
    p.add_argument(
        "--vector", help="or: a vector file (.safetensors/.npy/.gguf) or 'assistant-axis'"
    )
    p.add_argument(
        "--layer", nargs="+", required=True, help="blocks >= 1 (llama.cpp cannot steer block 0)"
    )
    p.add_argument("--alpha", type=magnitude, default=1.0, help="scale baked into the file (default 1)")
    p.add_argument(
        "--model-hint", help="architecture name in the file (default: the model's model_type)"
    )
    p.add_argument("--out", required=True, help="output .gguf path")
    p.set_defaults(handler=_cmd_export)


def _cmd_contrast(args: argparse.Namespace) -> int:
    from pvrs.cli.steering_run import run_contrast

    return run_contrast(args)


def _add_contrast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contrast",
        help="contrastive vector: mean activation of positive minus negative responses",
        description="Per layer, the mean over positive responses of each response's mean "
        "activation over its tokens (--mask-strategy), minus the same for the negative ones. "
        "Files are JSON/JSONL rows {question, answer, system?}.",
    )
    add_model_args(p)
    p.add_argument("--positive", required=True, help="responses showing the trait")
    p.add_argument("--negative", required=True, help="responses without it")
    p.add_argument(
        "--mask-strategy", default="answer_mean", help="tokens averaged per response (default %(default)s)"
    )
    p.add_argument(
        "--out", required=True, help="output .safetensors (tensor 'activations', (L, H))"
    )
    p.set_defaults(handler=_cmd_contrast)


def register(sub: argparse._SubParsersAction) -> None:
    _add_steer(sub)
    _add_chat(sub)
    _add_monitor(sub)
    _add_export(sub)
    _add_contrast(sub)
