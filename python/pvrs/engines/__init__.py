"""Engines that run models and reduce their residual streams: the transformers engine
(`transformers`: batched forward passes with hooks, see `hooks`), replicas of it on a Ray
cluster (`ray_engine`, the `pvrs[ray]` extra), and model loading
(`models`: Hugging Face ids, local folders and the built-in model)."""

from __future__ import annotations

from pvrs._lazy import lazy_getattr

_EXPORTS = {
    "EngineConfig": "pvrs.engines.transformers",
    "extract_activations": "pvrs.engines.transformers",
    "sample_means": "pvrs.engines.transformers",
    "load": "pvrs.engines.models",
    "ModelSpec": "pvrs.engines.ray_engine",
    "RayConfig": "pvrs.engines.ray_engine",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
