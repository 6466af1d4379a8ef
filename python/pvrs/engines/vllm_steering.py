"""Steering inside stock vLLM, per request: the JSON-able steering spec, its parser and
validator, and the offline API (`SteerableLLM`) that starts a steerable `vllm.LLM` and
generates a batch where every request has its own spec or none.

A spec is a list of edits, applied in order at each layer. Each edit is

    {"kind": "add" | "ablate" | "mean_ablate" | "cap" | "floor",
     "vector": NAME,                # registered once per LLM, a (num_layers, hidden) tensor
     "layers": 15 | [12, 13] | "12-14",
     "coef": 4.0 | [4.0, 3.0, 2.0], # one number, or one per layer: alpha for add, the mean
                                    # for mean_ablate, tau for cap/floor, unused for ablate
     "positions": "all" | "prompt" | "generated" | "response",
     "schedule": "constant" | "linear:N" | "first:N"}   # add only

(`alpha`, `mean` or `tau` may be given instead of `coef`.) A string `NAME@LAYER:ALPHA` or
`NAME@L1-L2:ALPHA` is one add at every position; a JSON string is parsed as JSON. The math is
`pvrs.engines.edits`, the one copy the transformers hooks use too; positions and schedules are
those of `pvrs.steering.interventions`: for a token at absolute position `p` of a prompt of `P`
tokens, `prompt` is `p < P`, `generated` is `p >= P`, `response` is `p >= P - 1` (the last
position of every forward under a KV cache: the last prompt token and every generated one, so
the first answer token is steered too), and a schedule's step is `max(0, p - (P - 1))`.

How it reaches the model: `pvrs.engines.vllm_worker.PvrsSteeringWorker` is vLLM's worker
extension (`LLM(worker_extension_cls=...)`, `vllm serve --worker-extension-cls ...`); vectors
are registered once (`collective_rpc("pvrs_register", args=(safetensors_path,))`) and stacked
on the device; each request's spec travels in `SamplingParams(extra_args={"pvrs": spec})`
(`vllm_xargs` on the server) and a request without one is untouched.

Eager only. The worker edits each decoder layer's output with forward hooks, which a compiled
forward (torch.compile, CUDA graphs) never calls: steering would silently do nothing. So a
steerable LLM always runs with `enforce_eager=True` and compilation off; asking for
`enforce_eager=False` or a compilation mode is refused here, and the worker refuses to register
vectors in an engine that was compiled (e.g. `vllm serve` without `--enforce-eager`).

Prefix caching stays on: a steered request's prompt carries a `cache_salt` derived from its
spec, so KV computed under one steering is never reused by a request with another or none."""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pvrs.engines.schedule import Schedule
from pvrs.errors import EngineStartError, InvalidArgumentError

__all__ = [
    "KINDS",
    "POSITIONS",
    "WORKER_EXTENSION",
    "Edit",
    "SteerableLLM",
    "SteeringSpec",
    "VectorCatalog",
    "parse_spec",
]

KINDS: tuple[str, ...] = ("add", "ablate", "mean_ablate", "cap", "floor")
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "response")
WORKER_EXTENSION = "pvrs.engines.vllm_worker.PvrsSteeringWorker"
_COEF_KEYS = ("coef", "alpha", "mean", "tau")
_EDIT_KEYS = {"kind", "vector", "layers", "positions", "schedule", *_COEF_KEYS}
_SHORTHAND = re.compile(r"^(?P<name>.+)@(?P<first>\d+)(?:-(?P<last>\d+))?:(?P<alpha>[^:@]+)$")


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"steering spec: {message}")


@dataclass(frozen=True)
class VectorCatalog:
    """What specs are checked against: the model's layer count and hidden size, and per
    registered vector name the layers where it is zero (no direction to project on)."""

    num_layers: int
    hidden_size: int
    zero_layers: Mapping[str, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, vectors: Mapping[str, torch.Tensor], num_layers: int, hidden_size: int) -> VectorCatalog:
        """Check every vector is a finite `(num_layers, hidden_size)` tensor under a usable name."""
        zero: dict[str, frozenset[int]] = {}
        for name, tensor in vectors.items():
            if not isinstance(name, str) or not name or "@" in name:
                raise InvalidArgumentError(f"vector name {name!r} must be a non-empty string without '@'")
            shape = tuple(tensor.shape)
            if shape != (num_layers, hidden_size):
                raise InvalidArgumentError(
                    f"vector {name!r} has shape {shape}; this model needs ({num_layers}, {hidden_size}), "
                    "one row per decoder block"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise InvalidArgumentError(f"vector {name!r} has NaN or infinite values")
            norms = torch.linalg.vector_norm(tensor.float(), dim=-1)
            zero[name] = frozenset(int(i) for i in torch.nonzero(norms == 0).flatten())
        return cls(num_layers, hidden_size, zero)


@dataclass(frozen=True)
class Edit:
    """One edit of a spec; `coef` has one value per layer in `layers`."""

    kind: str
    vector: str
    layers: tuple[int, ...]
    coef: tuple[float, ...]
    positions: str = "all"
    schedule: Schedule = field(default_factory=Schedule)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "vector": self.vector, "layers": list(self.layers),
                               "coef": list(self.coef), "positions": self.positions}
        if not self.schedule.constant:
            out["schedule"] = str(self.schedule)
        return out


@dataclass(frozen=True)
class SteeringSpec:
    """The edits of one request, in the order they apply at a layer."""

    edits: tuple[Edit, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.edits]

    def dumps(self) -> str:
        """Canonical JSON: what travels to the worker (`extra_args["pvrs"]`)."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @property
    def cache_salt(self) -> str:
        """A prefix-cache salt unique to this steering: equal specs share cached KV, others never."""
        return "pvrs-" + hashlib.sha256(self.dumps().encode()).hexdigest()[:32]


def _layers(raw: Any, catalog: VectorCatalog | None) -> tuple[int, ...]:
    if isinstance(raw, bool):
        raise _bad(f"layers {raw!r} must be a layer, a list of layers or 'FIRST-LAST'")
    if isinstance(raw, int):
        layers: list[int] = [raw]
    elif isinstance(raw, str) and re.fullmatch(r"\d+(-\d+)?", raw.strip()):
        first, _, last = raw.strip().partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise _bad(f"layers {raw!r} run backwards; write FIRST-LAST with FIRST <= LAST")
        layers = list(range(lo, hi + 1))
    elif isinstance(raw, list) and raw and all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        layers = list(raw)
    else:
        raise _bad(f"layers {raw!r} must be a layer, a non-empty list of layers or 'FIRST-LAST'")
    if len(set(layers)) != len(layers):
        raise _bad(f"layers {raw!r} name a layer twice")
    if catalog is not None:
        bad = [i for i in layers if not 0 <= i < catalog.num_layers]
        if bad:
            raise _bad(f"layer(s) {bad} out of range; this model has layers 0-{catalog.num_layers - 1}")
    return tuple(layers)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{what} {value!r} is not a number")
    if not math.isfinite(value):
        raise _bad(f"{what} is {value!r}; it must be a finite number")
    return float(value)


def _edit(raw: Any, catalog: VectorCatalog | None) -> Edit:
    if isinstance(raw, str):
        return _shorthand(raw, catalog)
    if not isinstance(raw, Mapping):
        raise _bad(f"an edit must be an object or 'NAME@LAYER:ALPHA', not {raw!r}")
    unknown = sorted(set(raw) - _EDIT_KEYS)
    if unknown:
        raise _bad(f"unknown key(s) {unknown} in an edit; the keys are {', '.join(sorted(_EDIT_KEYS))}")
    kind = raw.get("kind", "add")
    if kind not in KINDS:
        raise _bad(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    vector = raw.get("vector")
    if not isinstance(vector, str) or not vector:
        raise _bad(f"a {kind} edit needs \"vector\": the name of a registered vector")
    if catalog is not None and vector not in catalog.zero_layers:
        known = ", ".join(sorted(catalog.zero_layers)) or "none"
        raise _bad(f"unknown vector {vector!r}; registered: {known}")
    if "layers" not in raw:
        raise _bad(f"a {kind} edit needs \"layers\"")
    layers = _layers(raw["layers"], catalog)
    given = [k for k in _COEF_KEYS if k in raw]
    if len(given) > 1:
        raise _bad(f"give one of {', '.join(given)}, not several")
    if not given and kind != "ablate":
        raise _bad(f"a {kind} edit needs \"coef\" ({_coef_meaning(kind)})")
    coef_raw = raw[given[0]] if given else 0.0
    values = coef_raw if isinstance(coef_raw, list) else [coef_raw]
    coef = tuple(_number(v, "coef") for v in values)
    if len(coef) == 1:
        coef = coef * len(layers)
    elif len(coef) != len(layers):
        raise _bad(f"coef has {len(coef)} values for {len(layers)} layers; give one, or one per layer")
    positions = raw.get("positions", "all")
    if positions not in POSITIONS:
        raise _bad(f"positions {positions!r} is not one of {', '.join(POSITIONS)}")
    try:
        schedule = Schedule.parse(raw.get("schedule"))
    except InvalidArgumentError as exc:
        raise _bad(str(exc)) from None
    if kind != "add" and not schedule.constant:
        raise _bad(f"a schedule applies to add only, not {kind}")
    if catalog is not None and kind != "add":
        zero = sorted(catalog.zero_layers[vector] & set(layers))
        if zero:
            raise _bad(f"vector {vector!r} is zero at layer(s) {zero}; it has no direction to {kind} there")
    return Edit(kind, vector, layers, coef, positions, schedule)


def _coef_meaning(kind: str) -> str:
    return {"add": "alpha", "mean_ablate": "the mean projection", "cap": "tau", "floor": "tau"}[kind]


def _shorthand(text: str, catalog: VectorCatalog | None) -> Edit:
    match = _SHORTHAND.match(text.strip())
    if match is None:
        raise _bad(f"{text!r} is not NAME@LAYER:ALPHA or NAME@FIRST-LAST:ALPHA")
    try:
        alpha = float(match["alpha"])
    except ValueError:
        raise _bad(f"alpha {match['alpha']!r} in {text!r} is not a number") from None
    last = match["last"]
    layers = f"{match['first']}-{last}" if last is not None else int(match["first"])
    return _edit({"kind": "add", "vector": match["name"], "layers": layers, "coef": alpha}, catalog)


def parse_spec(raw: Any, catalog: VectorCatalog | None = None) -> SteeringSpec | None:
    """A `SteeringSpec` from what a request carries: a spec, a list of edits, one edit (an
    object, or `{"edits": [...]}`), a shorthand `NAME@LAYER:ALPHA` or a JSON string of any of
    these. None, `""` and `[]` are no steering. With a `catalog`, vector names, layers and
    zero directions are checked too. Every mistake is one `InvalidArgumentError` line."""
    if raw is None or isinstance(raw, SteeringSpec):
        return raw if raw is None or catalog is None else parse_spec(raw.to_json(), catalog)
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if text[0] in "[{":
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _bad(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        else:
            raw = [text]
    if isinstance(raw, Mapping):
        raw = raw["edits"] if set(raw) == {"edits"} else [raw]
    if not isinstance(raw, list):
        raise _bad(f"expected a list of edits, an edit or 'NAME@LAYER:ALPHA', not {type(raw).__name__}")
    edits = tuple(_edit(e, catalog) for e in raw)
    return SteeringSpec(edits) if edits else None


def save_vectors(vectors: Mapping[str, torch.Tensor], folder: Path) -> Path:
    """The vectors as one fp32 safetensors file in `folder`: what `pvrs_register` loads."""
    from safetensors.torch import save_file

    path = folder / "pvrs-vectors.safetensors"
    save_file({name: t.detach().to("cpu", torch.float32).contiguous() for name, t in vectors.items()}, str(path))
    return path


class SteerableLLM:
    """A `vllm.LLM` with pvrs's worker extension and `vectors` (name -> `(num_layers, hidden)`)
    registered, always eager (see the module docstring). `llm_kwargs` go to `vllm.LLM`.

        llm = SteerableLLM("path/to/model", {"pirate": vec}, dtype="float32")
        outs = llm.generate(prompts, [None, "pirate@15:4.0", [{"kind": "cap", ...}]], params)
    """

    def __init__(self, model: str, vectors: Mapping[str, torch.Tensor], **llm_kwargs: Any) -> None:
        if llm_kwargs.get("enforce_eager") is False:
            raise InvalidArgumentError(
                "steering on vLLM needs enforce_eager=True: a compiled forward never runs pvrs's "
                "layer hooks, so steering would silently do nothing"
            )
        compilation = llm_kwargs.pop("compilation_config", None)
        mode = compilation.get("mode", 0) if isinstance(compilation, Mapping) else compilation
        if mode not in (None, 0):
            raise InvalidArgumentError(
                f"steering on vLLM runs without compilation; compilation_config {compilation!r} is refused "
                "(a compiled forward never runs pvrs's layer hooks)"
            )
        extension = llm_kwargs.get("worker_extension_cls", WORKER_EXTENSION)
        if extension != WORKER_EXTENSION:
            raise InvalidArgumentError(f"worker_extension_cls must be {WORKER_EXTENSION!r} for steering")
        from pvrs.engines.vllm_engine import import_vllm, start_failure

        vllm = import_vllm()
        kwargs = {**llm_kwargs, "enforce_eager": True, "compilation_config": {"mode": 0},
                  "worker_extension_cls": WORKER_EXTENSION}
        try:
            self.llm = vllm.LLM(model=model, **kwargs)
        except Exception as exc:  # vLLM raises many kinds
            raise EngineStartError(f"vLLM could not start model {model!r}: {start_failure(exc)}") from exc
        num_layers, hidden = self.llm.collective_rpc("pvrs_shape")[0]
        self.catalog = VectorCatalog.of(vectors, num_layers, hidden)
        if vectors:
            with tempfile.TemporaryDirectory(prefix="pvrs-vllm-") as tmp:
                self.llm.collective_rpc("pvrs_register", args=(str(save_vectors(vectors, Path(tmp))),))

    def prepare(self, prompt: str | Sequence[int] | Mapping[str, Any], spec: Any, params: Any) -> tuple[Any, Any]:
        """One request's vLLM inputs: the prompt (text, token ids or a prompt dict), salted for
        the prefix cache when steered, and `params` carrying the checked spec."""
        checked = parse_spec(spec, self.catalog)
        if isinstance(prompt, str):
            inputs: dict[str, Any] = {"prompt": prompt}
        elif isinstance(prompt, Mapping):
            inputs = dict(prompt)
        else:
            inputs = {"prompt_token_ids": [int(t) for t in prompt]}
        if checked is None:
            return inputs, params
        inputs["cache_salt"] = checked.cache_salt
        return inputs, steered_params(params, checked)

    def generate(
        self,
        prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
        specs: Sequence[Any] | None = None,
        sampling_params: Any = None,
        *,
        use_tqdm: bool = False,
    ) -> list[Any]:
        """`vllm.LLM.generate` where request `i` is steered by `specs[i]` (anything `parse_spec`
        reads; None: unsteered). `specs=None` steers nothing. Every spec is checked before any
        request is sent. `sampling_params` is one `SamplingParams` or one per prompt."""
        from vllm import SamplingParams

        n = len(prompts)
        per_spec = [None] * n if specs is None else list(specs)
        if len(per_spec) != n:
            raise InvalidArgumentError(f"{len(per_spec)} steering specs for {n} prompts; give one per prompt (None: unsteered)")
        if isinstance(sampling_params, Sequence):
            params = list(sampling_params)
            if len(params) != n:
                raise InvalidArgumentError(f"{len(params)} sampling params for {n} prompts")
        else:
            params = [sampling_params or SamplingParams()] * n
        requests = [self.prepare(p, s, sp) for p, s, sp in zip(prompts, per_spec, params, strict=True)]
        return self.llm.generate([r[0] for r in requests], [r[1] for r in requests], use_tqdm=use_tqdm)

    def close(self) -> None:
        """Shut the engine down (vLLM's processes end with it)."""
        import contextlib
        import gc

        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        gc.collect()


def steered_params(params: Any, spec: SteeringSpec) -> Any:
    """A copy of `params` (vLLM `SamplingParams`) whose `extra_args` carry `spec`."""
    extra = dict(getattr(params, "extra_args", None) or {})
    extra["pvrs"] = spec.dumps()
    try:
        return replace(params, extra_args=extra)
    except TypeError:  # not a dataclass in this vLLM: clone and set
        clone = params.clone()
        clone.extra_args = extra
        return clone

