"""Steering: directions to steer with (`directions`), interventions on the residual stream
(`interventions`: steer, ablate, mean_ablate, cap), other tools' published vectors
(`published`), residual reads and calibration (`residuals`), drift
monitoring (`monitor`), contrastive vectors (`contrast`) and llama.cpp control vectors
(`controlvector`)."""

from __future__ import annotations

from pvrs._lazy import lazy_getattr

_EXPORTS = {
    "steer": "pvrs.steering.interventions",
    "ablate": "pvrs.steering.interventions",
    "mean_ablate": "pvrs.steering.interventions",
    "cap": "pvrs.steering.interventions",
    "suggested_alpha": "pvrs.steering.interventions",
    "suggested_alphas": "pvrs.steering.interventions",
    "direction": "pvrs.steering.directions",
    "assistant_axis_direction": "pvrs.steering.directions",
    "probe_direction": "pvrs.steering.directions",
    "load_vector": "pvrs.steering.directions",
    "calibrate_tau": "pvrs.steering.residuals",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
