"""`pvrs serve`: vLLM's OpenAI-compatible server with pvrs's steering, per request
(`pvrs.engines.vllm_serve`)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import shlex
import sys
from typing import TYPE_CHECKING, Any

from pvrs.cli.common import add_vllm_args, bounded_int, vllm_config
from pvrs.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from pvrs.engines.vllm_engine import VllmConfig
    from pvrs.engines.vllm_serve import Served

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def check_host(host: str, allow_remote: bool) -> None:
    """The server has no authentication: only this machine may reach it unless asked."""
    if allow_remote:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(
            f"--host {host!r} would let other machines steer this model (the server has no authentication); "
            "serve on 127.0.0.1 (tunnel to it), or add --allow-remote"
        )


def parse_named_file(text: str) -> tuple[str, str]:
    """argparse type of `--vector NAME=FILE`."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FILE")
    return name, path


def load_vectors(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, list[dict[str, Any]]]]:
    """The vectors a server registers, by name, and its named specs (presets): per store
    (`--vectors`; default: the default store, when it holds this model), every persona minus
    the baseline under its id and `assistant-axis`; each `--vector NAME=FILE`; and per
    `--capping CONFIG.pt[:EXPERIMENT]`, its caps' directions under the config's names (each
    zero but at its layer) and a preset named by the experiment (or the file) capping them as
    published. A name given to two different vectors is refused."""
    import torch

    from pvrs.hub.vector_sources import open_store
    from pvrs.steering.directions import assistant_axis_direction, direction, load_vector
    from pvrs.store import BASELINE_PERSONA_ID
    from pvrs.store.importers import model_num_layers

    vectors: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}

    def add(name: str, array: object, origin: str) -> None:
        tensor = torch.as_tensor(array, dtype=torch.float32)
        if name in vectors and not torch.equal(vectors[name], tensor):
            raise InputError(f"vector name {name!r} comes from both {where[name]} and {origin}; rename one (--vector NAME=FILE)")
        vectors[name], where[name] = tensor, where.get(name, origin)

    for source in args.vectors or ([] if args.vector or args.capping else [None]):
        store = open_store(args.model, source, args.mask_strategy)
        roles = [p for p in store.list_personas([args.variant]) if p != BASELINE_PERSONA_ID]
        if not roles:
            if source is None:  # nothing extracted yet: serve unsteered
                continue
            raise InputError(f"--vectors {source!r} holds no personas of {args.model!r} ({args.variant}, "
                             f"{args.mask_strategy}); run `pvrs extract` for it, or check --variant/--mask-strategy")
        origin = f"--vectors {source}" if source else "the default store"
        for pid in roles:
            add(pid, direction(store, pid, variant=args.variant), origin)
        add("assistant-axis", assistant_axis_direction(store, variant=args.variant), origin)
    for name, path in args.vector or []:
        add(name, load_vector(path, num_layers=model_num_layers(args.model)), f"--vector {name}={path}")
    presets: dict[str, list[dict[str, Any]]] = {}
    for text in args.capping or []:
        presets.update(_capping(text, model_num_layers(args.model), add))
    return vectors, presets


def _capping(text: str, num_layers: int | None, add: Callable[[str, object, str], None]) -> dict[str, list[dict[str, Any]]]:
    """One `--capping`: its caps registered through `add`, and its preset."""
    import numpy as np

    from pvrs.steering.published import capping_experiment, split_capping_spec

    config = split_capping_spec(text)
    if config is None:
        raise InputError(f"--capping {text!r} is not an assistant-axis capping config CONFIG.pt[:EXPERIMENT]")
    if num_layers is None:
        raise InputError(f"--capping {text!r}: cannot read the layer count of --model to place its caps; pass a model folder with config.json")
    path, experiment = config
    edits = []
    for cap in capping_experiment(path, experiment):
        if not 0 <= cap.layer < num_layers:
            raise InputError(f"--capping {text!r}: cap {cap.name!r} is at layer {cap.layer}, but the model has layers 0-{num_layers - 1}")
        rows = np.zeros((num_layers, cap.vector.size), np.float32)
        rows[cap.layer] = cap.vector
        add(cap.name, rows, f"--capping {text}")
        edits.append({"kind": "cap", "vector": cap.name, "layers": cap.layer, "tau": cap.tau})
    return {experiment or path.stem: edits}


def check_fits(config: VllmConfig, vectors: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose config cannot be read, or a vector that does not fit it, in one line
    before vLLM spends a minute starting (the started server checks again, against vLLM's model)."""
    from pvrs.engines.hooks import decoder_layers
    from pvrs.engines.models import skeleton
    from pvrs.engines.vllm_steering import VectorCatalog
    from pvrs.steering.residuals import hidden_size

    model, _ = skeleton(config.model, on_gpu=False)
    VectorCatalog.of(vectors, len(decoder_layers(model)), hidden_size(model))


def curl_example(served: Served) -> str:
    """A request to paste: a steered chat completion with the first vector at a middle layer."""
    name = served.names[0] if served.names else "NAME"
    spec = f"{name}@{served.catalog.num_layers // 2}:4.0"
    body = {"model": served.model, "messages": [{"role": "user", "content": "Tell me about yourself."}],
            "max_tokens": 64, "vllm_xargs": {"pvrs": spec}}
    return (f"curl {served.url}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body))}")


def _cmd_serve(args: argparse.Namespace) -> int:
    check_host(args.host, args.allow_remote)
    from pvrs.engines.vllm_engine import import_vllm
    from pvrs.engines.vllm_serve import serve

    import_vllm("pvrs serve")
    config = vllm_config(args)
    assert config is not None  # `--engine` is always vllm here
    vectors, presets = load_vectors(args)
    check_fits(config, vectors)

    def ready(served: Served) -> None:
        names = ", ".join(served.names) or "none (add --vectors or --vector)"
        print(f"pvrs serve: {served.model} at {served.url}/v1 (OpenAI API); vectors: {names}", flush=True)
        if served.presets:
            print(f"  presets (\"pvrs\": NAME): {', '.join(served.presets)}", flush=True)
        print(f"  steer a request: {curl_example(served)}", flush=True)
        print("  Ctrl-C stops the server", flush=True)

    serve(config, vectors, args.host, args.port, ready, presets)
    print("pvrs serve: server stopped", file=sys.stderr)
    return 130  # it runs until stopped: Ctrl-C or a signal


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.engines.models import DEFAULT_MODEL, DTYPES
    from pvrs.hub.vector_sources import SOURCE_HELP

    p = sub.add_parser(
        "serve",
        help="serve a model over vLLM's OpenAI API, each request steered as it asks",
        description="Start vLLM's OpenAI-compatible server (pip install 'pvrs[vllm]') with pvrs's steering "
        "loaded (always eager: steering never runs in a compiled forward). A request steers itself with "
        "\"vllm_xargs\": {\"pvrs\": \"NAME@LAYER:ALPHA\"} or a JSON spec in its body; a request without one is "
        "untouched, a bad spec is an HTTP 400. Ctrl-C stops it.",
    )
    vec = p.add_argument_group("vectors")
    vec.add_argument(
        "--vectors", action="append", metavar="DIR|ORG/NAME",
        help=f"register every persona of this store (minus the baseline, by its id) and 'assistant-axis' "
        f"(repeatable): {SOURCE_HELP}",
    )
    vec.add_argument("--vector", action="append", type=parse_named_file, metavar="NAME=FILE",
                     help="register a vector file (.safetensors/.npy/.pt/.gguf) under NAME (repeatable)")
    vec.add_argument(
        "--capping", action="append", metavar="CONFIG.pt[:EXPERIMENT]",
        help="an assistant-axis capping config: its caps' vectors, and the experiment as a preset a request names "
        "instead of a spec (\"pvrs\": \"EXPERIMENT\"; the file's name without one) (repeatable)",
    )
    vec.add_argument("--variant", default="templated", help="prompt variant of stored vectors (default %(default)s)")
    vec.add_argument("--mask-strategy", default="answer_mean", help="mask strategy of stored vectors (default %(default)s)")
    net = p.add_argument_group("server")
    net.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s: this machine only)")
    net.add_argument("--port", type=bounded_int(1, 65535), default=DEFAULT_PORT, help="port (default %(default)s)")
    net.add_argument("--allow-remote", action="store_true",
                     help="allow a --host other machines can reach (the server has no authentication)")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=DEFAULT_MODEL, help=f"HF id, local folder or built-in (default {DEFAULT_MODEL})")
    mod.add_argument("--dtype", default="auto", choices=DTYPES, help="default auto: bfloat16 on GPU, float32 on CPU")
    mod.add_argument("--revision", help="model revision on the Hub: branch, tag or commit (default: main)")
    mod.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (only for repos you trust)")
    mod.add_argument("--no-prefix-reuse", action="store_true", help="turn vLLM's prefix caching off")
    add_vllm_args(p.add_argument_group("engine"))
    p.set_defaults(handler=_cmd_serve, engine="vllm", device="auto")  # what `vllm_config` reads
