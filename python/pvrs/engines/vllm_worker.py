"""pvrs's vLLM worker extension: per-request steering inside stock vLLM (see
`pvrs.engines.vllm_steering` for the spec and the offline API).

Loaded with `LLM(..., worker_extension_cls="pvrs.engines.vllm_worker.PvrsSteeringWorker")` or
`vllm serve --enforce-eager --worker-extension-cls pvrs.engines.vllm_worker.PvrsSteeringWorker`,
then `collective_rpc("pvrs_register", args=(path,))` with a safetensors file of named
`(num_layers, hidden)` vectors: they are stacked on the device once, and forward hooks go on
the decoder layers and the model.

Each forward, a pre-hook on the model reads the step's requests (the input batch's `req_ids`,
their token rows from the runner's `query_start_loc`, their computed and prompt token counts),
parses each request's `extra_args["pvrs"]` once, and plans per layer which rows get which edit;
the layer hooks then apply the plan with `pvrs.engines.edits`. vLLM's Llama-family layers return
`(hidden, residual)`, whose sum is the residual stream after the block (transformers' block
output); an edited layer returns `(edited_sum, 0)`, which the next fused add + norm reads
exactly as transformers reads the edited output. A step without steered requests costs a
dictionary look-up per request and nothing per layer.

Eager only (the hooks are Python): registering in a compiled engine is refused. A request whose
spec is bad never reaches here from pvrs (specs are checked before sending); if one does, the
worker raises rather than generate unsteered text silently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pvrs.engines.edits import add, along, unit
from pvrs.engines.hooks import decoder_layers
from pvrs.engines.vllm_steering import Edit, SteeringSpec, VectorCatalog, parse_spec


@dataclass
class _Op:
    """One edit at one layer over some of the step's rows: `rows` (device, long) and, for a
    scheduled add, the per-row factors."""

    kind: str
    vector: int
    coef: float
    rows: torch.Tensor
    factor: torch.Tensor | None = None


@dataclass
class _Group:
    kind: str
    vector: int
    coef: float
    rows: list[np.ndarray] = field(default_factory=list)
    factors: list[np.ndarray] | None = None


def _rows(edit: Edit, start: int, computed: int, count: int, prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The step's rows this edit touches for one request (rows `start:start+count` at absolute
    positions `computed...`), and their absolute positions."""
    pos = computed + np.arange(count)
    if edit.positions == "prompt":
        keep = pos < prompt_len
    elif edit.positions == "generated":
        keep = pos >= prompt_len
    elif edit.positions == "response":
        keep = pos >= prompt_len - 1
    else:
        keep = np.ones(count, dtype=bool)
    return (start + np.flatnonzero(keep)), pos[keep]


class _Steering:
    """The registered vectors on the device and the current step's plan."""

    def __init__(self, names: Sequence[str], stacked: torch.Tensor, catalog: VectorCatalog) -> None:
        self.index = {name: i for i, name in enumerate(names)}
        self.catalog = catalog
        self.vectors = stacked  # (n, L, H) fp32
        # row by row as the transformers hooks compute them (same bits); zero rows stay zero
        # (a spec projecting on one is refused by the catalog)
        self.units = torch.zeros_like(stacked)
        for n, layer in zip(*torch.nonzero(torch.linalg.vector_norm(stacked, dim=-1) > 0).T.tolist(), strict=True):
            self.units[n, layer] = unit(stacked[n, layer])
        self.scaled: dict[tuple[int, int, float, torch.dtype], torch.Tensor] = {}
        self.specs: dict[str, tuple[Any, SteeringSpec | None]] = {}
        self.plan: dict[int, list[_Op]] = {}

    def spec_of(self, req_id: str, extra: Any) -> SteeringSpec | None:
        raw = extra.get("pvrs") if isinstance(extra, dict) else None
        cached = self.specs.get(req_id)
        if cached is not None and cached[0] is raw:
            return cached[1]
        spec = parse_spec(raw, self.catalog)
        self.specs[req_id] = (raw, spec)
        return spec

    def plan_step(self, runner: Any) -> None:
        self.plan = {}
        batch = runner.input_batch
        req_ids = list(batch.req_ids)
        live = set(req_ids)
        if len(self.specs) > 2 * len(live) + 64:  # forget finished requests
            self.specs = {r: s for r, s in self.specs.items() if r in runner.requests}
        steered = []
        for k, req_id in enumerate(req_ids):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            spec = self.spec_of(req_id, getattr(params, "extra_args", None)) if params is not None else None
            if spec is not None:
                steered.append((k, state, spec))
        if not steered:
            return
        starts = runner.query_start_loc.np[: len(req_ids) + 1]
        computed = batch.num_computed_tokens_cpu
        groups: dict[tuple[int, int, str, int, float], _Group] = {}
        for k, state, spec in steered:
            start, count = int(starts[k]), int(starts[k + 1] - starts[k])
            prompt_len = int(state.num_prompt_tokens)
            for slot, edit in enumerate(spec.edits):
                rows, pos = _rows(edit, start, int(computed[k]), count, prompt_len)
                if rows.size == 0:
                    continue
                vector = self.index[edit.vector]
                for layer, coef in zip(edit.layers, edit.coef, strict=True):
                    key = (layer, slot, edit.kind, vector, coef)
                    group = groups.get(key)
                    if group is None:
                        group = groups[key] = _Group(edit.kind, vector, coef)
                    group.rows.append(rows)
                    if not edit.schedule.constant:
                        if group.factors is None:
                            group.factors = [np.ones(r.size, np.float32) for r in group.rows[:-1]]
                        steps = np.maximum(0, pos - (prompt_len - 1))
                        group.factors.append(edit.schedule.factors(torch.from_numpy(steps)).numpy())
                    elif group.factors is not None:
                        group.factors.append(np.ones(rows.size, np.float32))
        device = self.vectors.device
        for (layer, *_), group in sorted(groups.items(), key=lambda item: item[0][:2]):
            rows = torch.from_numpy(np.concatenate(group.rows)).to(device, non_blocking=True)
            factor = None if group.factors is None else torch.from_numpy(np.concatenate(group.factors)).to(device)
            self.plan.setdefault(layer, []).append(_Op(group.kind, group.vector, group.coef, rows, factor))

    def apply(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        for op in self.plan[layer]:
            part = hidden.index_select(0, op.rows)
            if op.kind == "add":
                factor = None if op.factor is None else op.factor.to(hidden.dtype).unsqueeze(-1)
                edited = add(part, self._scaled(op, layer, hidden.dtype), factor)
            else:
                edited = along(part, self.units[op.vector, layer], op.kind, op.coef)
            hidden.index_copy_(0, op.rows, edited)
        return hidden

    def _scaled(self, op: _Op, layer: int, dtype: torch.dtype) -> torch.Tensor:
        # `alpha * v` in fp32, then in the model's dtype, as `steer` computes it
        key = (op.vector, layer, op.coef, dtype)
        if key not in self.scaled:
            if len(self.scaled) > 4096:
                self.scaled.clear()
            self.scaled[key] = (op.coef * self.vectors[op.vector, layer]).to(dtype)
        return self.scaled[key]


def check_eager(config: Any) -> None:
    """Refuse an engine whose forward is compiled (torch.compile, CUDA graphs): it never calls
    the hooks, so steered requests would silently come out unsteered."""
    compilation = config.compilation_config
    mode = getattr(compilation, "mode", getattr(compilation, "level", 0))
    if not config.model_config.enforce_eager or int(mode or 0) != 0:
        raise RuntimeError(
            "pvrs steering needs vLLM started with enforce_eager=True (--enforce-eager) and no "
            "compilation: a compiled forward never runs pvrs's layer hooks, so it would not steer"
        )


class PvrsSteeringWorker:
    """Mixed into vLLM's worker by `worker_extension_cls`; its methods run by `collective_rpc`."""

    def pvrs_shape(self) -> tuple[int, int]:
        """`(num_layers, hidden_size)` of the loaded model."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return len(decoder_layers(model)), int(self.vllm_config.model_config.get_hidden_size())  # type: ignore[attr-defined]

    def pvrs_register(self, path: str) -> list[str]:
        """Load the named `(num_layers, hidden)` vectors of a safetensors file, stack them on the
        model's device and install the hooks (once); returns the registered names."""
        from safetensors.torch import load_file

        check_eager(self.vllm_config)  # type: ignore[attr-defined]
        if getattr(self, "_pvrs", None) is not None:
            raise RuntimeError("pvrs vectors are already registered in this engine; start a new one")
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        layers = decoder_layers(model)
        num_layers, hidden = self.pvrs_shape()
        loaded = load_file(path)
        catalog = VectorCatalog.of(loaded, num_layers, hidden)
        names = sorted(loaded)
        device = next(model.parameters()).device
        stacked = torch.stack([loaded[n].float() for n in names]).to(device) if names else torch.zeros(0, num_layers, hidden, device=device)
        steering = _Steering(names, stacked, catalog)
        runner = self.model_runner  # type: ignore[attr-defined]

        def plan(_module: nn.Module, _args: Any, _kwargs: Any) -> None:
            from vllm.forward_context import get_forward_context, is_forward_context_available

            dummy = not is_forward_context_available() or get_forward_context().attn_metadata is None
            if dummy:  # profiling and warm-up runs: nothing to steer
                steering.plan = {}
            else:
                steering.plan_step(runner)

        def make_hook(index: int) -> Any:
            def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
                if index not in steering.plan:
                    return None
                if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], torch.Tensor):
                    hidden, residual = output
                    return steering.apply(index, hidden + residual), torch.zeros_like(residual)
                if isinstance(output, torch.Tensor):
                    return steering.apply(index, output.clone())
                raise RuntimeError(f"pvrs steering: decoder layer {index} returned {type(output).__name__}; unsupported")

            return hook

        model.register_forward_pre_hook(plan, with_kwargs=True)
        for i, layer in enumerate(layers):
            layer.register_forward_hook(make_hook(i))
        self._pvrs = steering
        return names
