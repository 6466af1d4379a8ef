"""A vLLM KV connector that reduces captured hidden states to pvrs's masked means inside vLLM.

Loaded by vLLM itself (`kv_connector_module_path`), in its engine and worker processes, so it
imports only torch, numpy, vLLM and the reduction (`pvrs.engines.vllm_reduce`), never the rest of
pvrs. With the `extract_hidden_states`
speculative method vLLM writes the residual stream of the chosen layers for every prompt token
into the KV cache of one cache-only layer (prefix-cached blocks included); this connector reads
each finished request's slots there, a few layers at a time, computes the fp32 mean over each
mask strategy's tokens on the model's device and writes only that `(S, L, H)` array, never the
per-token states.

A request asks for it with `SamplingParams(extra_args={"kv_transfer_params": {"pvrs": {...}}})`:
`out` (the .npy path to write) and `spans` (per strategy, `[start, end)` token ranges). The
array is written to `out + ".tmp"` then renamed, so a reader sees it whole or not at all; a
failure writes `out + ".err"` with the reason instead. Only tensor-parallel rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)

from pvrs.engines.vllm_reduce import masked_means

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

@dataclass
class Reduction:
    req_id: str
    out: str
    spans: list[list[list[int]]]  # per strategy, [start, end) token ranges
    num_tokens: int
    block_ids: list[int]


@dataclass
class PvrsConnectorMetadata(KVConnectorMetadata):
    reductions: list[Reduction] = field(default_factory=list)


def _write_atomic(path: str, write: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


class PvrsHiddenStatesConnector(KVConnectorBase_V1, SupportsHMA):
    """Store-only connector: nothing is ever loaded from it; finished requests' blocks are held
    until their reduction is written (one step later), then freed."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig | None = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._group = _hidden_state_group(kv_cache_config)
        self._block_size = (
            vllm_config.cache_config.block_size
            if kv_cache_config is None
            else kv_cache_config.kv_cache_groups[self._group].kv_cache_spec.block_size
        )
        self._pending: dict[str, Reduction] = {}  # scheduler side: finished, not yet sent
        self._kv_cache: torch.Tensor | None = None  # worker side: (blocks, layers, block, hidden)
        self._rank_zero = True
        self._written: set[str] = set()  # worker side: reduced, not yet reported finished
        self._finished: set[str] = set()

    def get_finished_count(self) -> int:
        return 1  # only rank 0 reduces: one notification per request

    # ---- worker side ----
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        from vllm.config import get_layers_from_vllm_config
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        from vllm.model_executor.models.extract_hidden_states import CacheOnlyAttentionLayer

        self._rank_zero = get_tensor_model_parallel_rank() == 0
        layers = list(get_layers_from_vllm_config(self._vllm_config, CacheOnlyAttentionLayer, list(kv_caches)))
        if len(layers) != 1:
            raise ValueError(f"pvrs connector: expected one cache-only hidden-state layer, found {len(layers)}")
        self._kv_cache = kv_caches[layers[0]]
        if self._kv_cache.shape[2] != self._block_size:
            raise ValueError(
                f"pvrs connector: hidden-state cache block size {self._kv_cache.shape[2]} != {self._block_size}"
            )

    def start_load_kv(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass

    def save_kv_layer(self, *args: Any, **kwargs: Any) -> None:
        pass  # the cache-only layer already wrote the states during the forward

    def wait_for_save(self) -> None:
        pass

    def _reduce(self, job: Reduction) -> None:
        assert self._kv_cache is not None
        try:
            means = masked_means(self._kv_cache, job.block_ids, job.num_tokens, job.spans).cpu().numpy()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).encode()
            _write_atomic(job.out + ".err", lambda f: f.write(reason))
            return
        _write_atomic(job.out, lambda f: np.save(f, means))

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        if self.has_connector_metadata():
            meta = self._get_connector_metadata()
            if isinstance(meta, PvrsConnectorMetadata):
                for job in meta.reductions:
                    # Only rank 0 reduces and reports: vLLM expects one notification per request.
                    if self._rank_zero:
                        self._reduce(job)
                        self._written.add(job.req_id)
        self._finished.update(finished_req_ids)
        done = self._written & self._finished
        self._written -= done
        self._finished -= done
        return done or None, None

    # ---- scheduler side ----
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return 0, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        pass

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = PvrsConnectorMetadata(list(self._pending.values()))
        self._pending.clear()
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        job = (request.kv_transfer_params or {}).get("pvrs")
        if not job or request.prompt_token_ids is None:
            return False, None
        self._pending[request.request_id] = Reduction(
            request.request_id, str(job["out"]), job["spans"], len(request.prompt_token_ids), list(block_ids)
        )
        return True, None

    def request_finished_all_groups(
        self, request: Request, block_ids: tuple[list[int], ...]
    ) -> tuple[bool, dict[str, Any] | None]:
        if not 0 <= self._group < len(block_ids):
            return False, None
        return self.request_finished(request, block_ids[self._group])

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config: VllmConfig) -> str | None:
        return "LBNHC"  # (tokens, layers) together per block, as indexed above


def _hidden_state_group(kv_cache_config: KVCacheConfig | None) -> int:
    """The KV-cache group of the hidden-state layer (found by its spec on both sides)."""
    if kv_cache_config is None:
        return 0
    from vllm.v1.kv_cache_interface import HiddenStateCacheSpec

    groups = kv_cache_config.kv_cache_groups
    ids = [i for i, g in enumerate(groups) if isinstance(g.kv_cache_spec, HiddenStateCacheSpec)]
    if len(ids) == 1:
        return ids[0]
    if not ids and len(groups) == 1:
        return 0
    raise ValueError(f"pvrs connector: cannot find the hidden-state cache group among {len(groups)} groups")
