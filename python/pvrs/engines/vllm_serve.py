"""`pvrs serve`: vLLM's OpenAI-compatible server with pvrs's steering loaded, run in this process.

The server is stock vLLM (`vllm serve`), started with pvrs's worker extension
(`pvrs.engines.vllm_worker`), eager (pvrs's hooks never run in a compiled forward), and the
named vectors registered in its workers before the first request is accepted. A request
chooses its steering in its body, `"vllm_xargs": {"pvrs": SPEC}` (a shorthand
`NAME@LAYER:ALPHA`, or a spec as JSON, `pvrs.engines.vllm_steering`); a request without one
is untouched.

`SpecGuard`, a middleware in front of vLLM's routes, checks every steered request in this
process before vLLM sees it: a bad spec is an HTTP 400 with one line (the worker would raise on
it and take the engine down). A good one travels on as its canonical JSON, with a prefix-cache
salt derived from it, so KV computed under one steering never serves another."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pvrs.engines.vllm_engine import VllmConfig, import_vllm, llm_kwargs, start_failure
from pvrs.engines.vllm_steering import WORKER_EXTENSION, VectorCatalog, parse_spec, save_vectors
from pvrs.errors import EngineStartError, InputError, InvalidArgumentError, PvrsError

# The routes whose requests carry a prompt cache salt; a spec sent to any other is refused,
# since its prompt's KV could be shared with unsteered requests there.
STEERABLE_PATHS = ("/v1/completions", "/v1/chat/completions")
_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Steering:
    """What a server steers with: the catalog specs are checked against, and named specs (a
    capping experiment's caps) that a request may give by name instead of spelling them out."""

    catalog: VectorCatalog
    presets: Mapping[str, Any] = field(default_factory=dict)


# What `SpecGuard` checks specs against: set by `serve` before vLLM builds its app (vLLM's
# `--middleware` takes an import path, so the running server's steering lives here).
_steering: Steering | None = None


def checked_body(path: str, body: bytes, steering: Steering) -> bytes:
    """`body` as vLLM should see it: unchanged without a pvrs spec (or when it is not a JSON
    object: vLLM answers that itself); with one (or a preset's name), the spec checked
    (`InvalidArgumentError`, one line, otherwise) and replaced by its canonical JSON, and the
    request's `cache_salt` set to one derived from it (and from its own salt, if it has one)."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return body
    xargs = request.get("vllm_xargs") if isinstance(request, dict) else None
    if not isinstance(xargs, dict) or "pvrs" not in xargs:
        return body
    if path not in STEERABLE_PATHS:
        raise InvalidArgumentError(f"steering works on {' and '.join(STEERABLE_PATHS)}, not {path}")
    raw = xargs["pvrs"]
    if isinstance(raw, str) and steering.presets and raw.strip()[:1] not in ("", "[", "{") and "@" not in raw:
        if raw not in steering.presets:
            raise InvalidArgumentError(
                f"steering spec: {raw!r} is neither a preset ({', '.join(steering.presets)}) nor NAME@LAYER:ALPHA"
            )
        raw = steering.presets[raw]
    spec = parse_spec(raw, steering.catalog)
    if spec is None:  # "" or []: no steering
        del xargs["pvrs"]
        return json.dumps(request).encode()
    xargs["pvrs"] = spec.dumps()
    own = request.get("cache_salt")
    if isinstance(own, str) and own:
        digest = hashlib.sha256(f"{own}\0{spec.cache_salt}".encode()).hexdigest()[:32]
        request["cache_salt"] = f"pvrs-{digest}"
    elif own is None:
        request["cache_salt"] = spec.cache_salt
    return json.dumps(request).encode()


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _bad_request(send: Send, message: str) -> None:
    """vLLM's own error body (OpenAI's shape), with the one-line reason."""
    body = json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SpecGuard:
    """ASGI middleware (vLLM's `--middleware`): steered requests are checked and rewritten by
    `checked_body` before any route reads them; a bad spec is answered 400 here."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _steering is None:
            await self.app(scope, receive, send)
            return
        try:
            body = checked_body(scope["path"], await _read(receive), _steering)
        except InvalidArgumentError as exc:
            await _bad_request(send, str(exc))
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:  # after the body, wait for the disconnect as the server would report it
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@dataclass(frozen=True)
class Served:
    """What `serve` tells its caller once the server listens."""

    url: str
    model: str
    catalog: VectorCatalog
    names: tuple[str, ...]
    presets: tuple[str, ...] = ()


def _server_args(config: VllmConfig, host: str, port: int) -> Any:
    """vLLM's `vllm serve` arguments for `config`, eager, with pvrs's extension and guard."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from pvrs.engines.models import resolve_device, resolve_dtype

    args = make_arg_parser(FlexibleArgumentParser(prog="pvrs serve")).parse_args([])
    dtype = str(resolve_dtype(config.model.dtype, resolve_device("auto"))).removeprefix("torch.")
    for key, value in llm_kwargs(config, dtype).items():
        setattr(args, key, value)
    args.enforce_eager = True  # pvrs's layer hooks never run in a compiled forward
    args.compilation_config = {"mode": 0}
    args.worker_extension_cls = WORKER_EXTENSION
    args.middleware = [f"{__name__}.SpecGuard"]
    args.served_model_name = [config.model.model]
    args.host, args.port = host, port
    validate_parsed_serve_args(args)
    return args


def serve(
    config: VllmConfig, vectors: Mapping[str, torch.Tensor], host: str, port: int,
    on_ready: Callable[[Served], None], presets: Mapping[str, Any] | None = None,
) -> None:
    """Run the server until it stops (Ctrl-C or SIGTERM; or its engine died, which vLLM logs).
    `vectors` and `presets` (named specs) are checked against the started model (one line if
    one does not fit) and the vectors registered before the server accepts requests;
    `on_ready` is called then."""
    import_vllm("pvrs serve")
    import uvloop

    # vLLM leaves its shared-memory queues to multiprocessing's resource tracker, which unlinks
    # them once this process has exited and warns about each: lines after "server stopped".
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), _QUIET_TRACKER)))
    args = _server_args(config, host, port)
    uvloop.run(_run(args, vectors, presets or {}, on_ready))


async def _run(
    args: Any, vectors: Mapping[str, torch.Tensor], presets: Mapping[str, Any], on_ready: Callable[[Served], None]
) -> None:
    global _steering
    from vllm.entrypoints.launchers.api_server.entry import build_and_serve
    from vllm.entrypoints.launchers.launcher import setup_server

    try:
        listen, sock = setup_server(args, reuse_port=False)
    except OSError as exc:
        raise InputError(f"--host {args.host} --port {args.port}: {exc.strerror or exc}; choose another --port") from None
    model = args.served_model_name[0]
    try:
        async with _started(args, model) as client:
            num_layers, hidden = (await client.collective_rpc("pvrs_shape"))[0]
            catalog = VectorCatalog.of(vectors, num_layers, hidden)
            for name, spec in presets.items():
                try:
                    parse_spec(spec, catalog)
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"preset {name!r}: {exc}") from None
            names: list[str] = []
            if vectors:
                with tempfile.TemporaryDirectory(prefix="pvrs-serve-") as tmp:
                    path = str(save_vectors(vectors, Path(tmp)))
                    names = (await client.collective_rpc("pvrs_register", args=(path,)))[0]
            _steering = Steering(catalog, presets)
            host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
            on_ready(Served(f"http://{host}:{args.port}", model, catalog, tuple(names), tuple(presets)))
            shutdown = await build_and_serve(client, listen, sock, args)  # returns once stopped
        await shutdown
    finally:
        _steering = None
        sock.close()


@asynccontextmanager
async def _started(args: Any, model: str) -> AsyncIterator[Any]:
    """vLLM's engine client for `args`; its failure to start is one `EngineStartError` line."""
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client

    started = False
    try:
        async with build_async_engine_client(args) as client:
            started = True
            yield client
    except Exception as exc:  # vLLM raises many kinds
        if started or isinstance(exc, PvrsError):
            raise
        reason = " ".join(start_failure(exc).split())  # its pydantic reasons may span lines
        raise EngineStartError(f"vLLM could not start model {model!r}: {reason}") from exc
