"""Flags and constants shared by several commands."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.errors import InputError, PvrsError, PvrsIOError
from pvrs.hub.vector_sources import SOURCE_HELP

if TYPE_CHECKING:
    from pvrs.engines.vllm_engine import VllmConfig

EXIT_USAGE = 2


MAX_COUNT = 2**31 - 1  # counts end up in C ints (torch, Rust, the OS): larger ones overflow there
MAX_SEED = 2**32 - 1  # numpy's and most engines' seed range
MAX_MAGNITUDE = 1e6  # a steering strength or cap this large only turns the model's states into inf/NaN
MAX_MB = 1e6  # a terabyte: larger parquet sizes overflow the byte counts
MAX_THREADS = 4 * (os.cpu_count() or 1)  # torch allocates per thread: 100000 ran out of memory, then hung
MAX_TEMPERATURE = 100.0  # far flatter than uniform sampling needs
DEFAULT_TOP_P = 0.9


def finite_float(text: str) -> float:
    """argparse type for every float flag: `nan` and `inf` parse as floats but mean nothing
    as a strength, temperature or size (and `--json` would write them as invalid JSON)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def score_threshold(text: str) -> float:
    """argparse type for a threshold on judge scores, which lie in 0-100."""
    value = finite_float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score 0-100")
    return value


def float_in(least: float, most: float, *, open_below: bool = False) -> Callable[[str], float]:
    """argparse type for a finite float in `[least, most]` (`(least, most]` when
    `open_below`); argparse prefixes the flag to the one-line error."""
    bounds = f"{'(' if open_below else '['}{least:g}, {most:g}]"

    def parse(text: str) -> float:
        value = finite_float(text)
        if not (least < value if open_below else least <= value) or value > most:
            raise argparse.ArgumentTypeError(f"{text!r} is not in {bounds}")
        return value

    return parse


probability = float_in(0, 1, open_below=True)  # --top-p, --gpu-memory-utilization
magnitude = float_in(-MAX_MAGNITUDE, MAX_MAGNITUDE)  # steering strengths and cap thresholds
megabytes = float_in(0, MAX_MB, open_below=True)


def bounded_int(least: int, most: int = MAX_COUNT) -> Callable[[str], int]:
    """argparse type for a whole number in `[least, most]`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
        if value > most:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {most}")
        return value

    return parse


positive_int = bounded_int(1)  # counts and budgets
non_negative_int = bounded_int(0)  # counts that may be 0 (`--gpus-per-replica 0`: CPU replicas)
seed_int = bounded_int(0, MAX_SEED)


class UniqueList(argparse.Action):
    """`nargs="+"` that drops repeated values (keeping the first), so `--variants templated
    templated` does the work once."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        setattr(namespace, self.dest, list(dict.fromkeys(values)))


def check_writable(flag: str, path: str | os.PathLike[str] | None, *, is_dir: bool = False) -> None:
    """Fail before any slow work when an output location cannot be written: the nearest
    existing folder on the way to it must be a writable folder."""
    if path is None:
        return
    target = Path(path).expanduser()
    probe = target if is_dir else target.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if target.exists() and target.is_dir() != is_dir:
        kind = "a file" if target.is_file() else "a folder"
        raise PvrsIOError(f"{flag} {str(path)!r} is {kind}; pass a {'folder' if is_dir else 'file path'}")
    if not probe.is_dir():
        raise PvrsIOError(f"{flag} {str(path)!r}: {str(probe)!r} is not a folder")
    writable = os.access(target if target.exists() else probe, os.W_OK)
    if not writable:
        raise PvrsIOError(f"{flag} {str(path)!r}: cannot write to {str(probe)!r} (permission denied)")


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name `path` in an OS error that names no file (a full disk fails `write()`, which knows
    no path), so `pvrs.cli.main` can say where the write failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and not isinstance(exc, PvrsError):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def add_model_args(p: argparse.ArgumentParser) -> None:
    from pvrs.engines.models import DEFAULT_MODEL, DTYPES

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"HF id, local folder or built-in (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: cuda when visible)"
    )
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="default auto: bfloat16 on GPU, float32 on CPU"
    )
    p.add_argument(
        "--threads",
        type=bounded_int(1, MAX_THREADS),
        action=_ThreadsAction,
        help="torch CPU threads (default: the physical cores available to this process, or OMP_NUM_THREADS)",
    )


class _ThreadsAction(argparse.Action):
    """`--threads N` takes effect as it is parsed, so every command that loads a model uses it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option: str | None = None,
    ) -> None:
        from pvrs.engines.models import set_threads

        set_threads(values)
        setattr(namespace, self.dest, values)


ENGINES = ("hf", "vllm")


def add_engine_args(p: argparse.ArgumentParser, runs: str) -> None:
    """`--engine` and vLLM's flags, one group; `runs` says what the engine runs in this command."""
    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--engine", choices=ENGINES, default="hf",
        help=f"what runs the model, for {runs}: hf (transformers, with hooks) or vllm (pip install 'pvrs[vllm]': "
        "continuous batching, prefix caching, tensor parallelism) (default %(default)s)",
    )
    add_vllm_args(eng)


def add_vllm_args(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How vLLM starts (read by `vllm_config`)."""
    group.add_argument("--tensor-parallel-size", type=positive_int, metavar="N", help="vLLM: GPUs the model is split over (default 1)")
    group.add_argument(
        "--gpu-memory-utilization", type=probability, metavar="F",
        help="vLLM: share of each GPU's memory it may take, 0-1 (default 0.9)",
    )
    group.add_argument("--max-model-len", type=positive_int, metavar="N", help="vLLM: context length (default: the model's, or the longest that fits in GPU memory)")
    group.add_argument(
        "--enforce-eager", action="store_true",
        help="vLLM: no torch.compile or CUDA graphs: starts in seconds, runs slower (default off)",
    )


def refuse_without(mode: str, does: str, flags: dict[str, object]) -> None:
    """One line for the first flag given that only means something with `mode`."""
    for flag, value in flags.items():
        if value is not None:
            raise InputError(f"{flag} {does}; add {mode} (or drop {flag})")


def refuse_clashes(mode: str, clashes: list[tuple[str, object, str]]) -> None:
    """One line for the first flag set that `mode` cannot combine with, saying what to do."""
    for flag, on, why in clashes:
        if on:
            raise InputError(f"{mode} with {flag}: {why}")


def vllm_config(
    args: argparse.Namespace, clashes: list[tuple[str, object, str]] | None = None, model: str | None = None
) -> VllmConfig | None:
    """`--engine vllm` and its flags (`add_engine_args`), checked before any model loads (vLLM
    itself included: missing, it is one line naming the install); None with `--engine hf`.
    `clashes` are the command's own flags that vLLM cannot honour; `--no-prefix-reuse`, where a
    command has it, turns prefix caching off. vLLM runs `model` (default `--model`)."""
    if args.engine != "vllm":
        refuse_without("--engine vllm", "sets up vLLM", {
            "--tensor-parallel-size": args.tensor_parallel_size, "--gpu-memory-utilization": args.gpu_memory_utilization,
            "--max-model-len": args.max_model_len, "--enforce-eager": args.enforce_eager or None,
        })
        return None
    refuse_clashes("--engine vllm", [
        *(clashes or []),
        ("--device", args.device != "auto", "vLLM uses the GPUs it sees (set CUDA_VISIBLE_DEVICES), or the CPU with its CPU build"),
    ])
    from pvrs.engines.models import ModelSpec
    from pvrs.engines.vllm_engine import VllmConfig, import_vllm

    import_vllm()
    return VllmConfig(
        ModelSpec(model or args.model, dtype=args.dtype, revision=getattr(args, "revision", None),
                  trust_remote_code=getattr(args, "trust_remote_code", False)),
        tensor_parallel_size=args.tensor_parallel_size or 1,
        gpu_memory_utilization=0.9 if args.gpu_memory_utilization is None else args.gpu_memory_utilization,
        prefix_caching=not getattr(args, "no_prefix_reuse", False),
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
    )


def add_model_and_store_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--variant",
        default="templated",
        help="prompt variant of stored vectors (default templated)",
    )
    p.add_argument(
        "--mask-strategy", default="answer_mean", help="mask strategy of stored vectors (default answer_mean)"
    )
    p.add_argument("--source", metavar="DIR|ORG/NAME", help=f"where stored vectors are read: {SOURCE_HELP}")


def add_generation_args(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    why: str = "greedy by default, so steered and unsteered replies differ only by the steering",
    system: bool = True,
) -> None:
    """The sampling flags. `why` says why this command's defaults are what they are, since
    they differ between commands."""
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=max_new_tokens, help="tokens generated per reply (default %(default)s)"
    )
    p.add_argument(
        "--temperature",
        type=float_in(0, MAX_TEMPERATURE),
        default=temperature,
        help=f"0 decodes greedily (default %(default)s: {why})",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed for sampling with --temperature > 0 (default %(default)s)")
    p.add_argument(
        "--top-p", type=probability, default=DEFAULT_TOP_P, help="nucleus sampling with --temperature > 0 (default %(default)s)"
    )
    if system:
        p.add_argument("--system", default=None, help="system prompt (default: the template's own)")

