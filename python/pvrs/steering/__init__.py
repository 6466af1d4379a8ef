"""Steering: directions to steer with (`directions`), interventions on the residual stream
(`interventions`: steer, ablate, mean_ablate, cap), other tools' published vectors
and capping configs (`published`; their files are read by `pvrs.store.vectorfiles`), residual
reads and calibration (`residuals`), drift monitoring (`monitor`) and contrastive vectors
(`contrast`)."""

from __future__ import annotations

from pvrs._lazy import lazy_getattr

_EXPORTS = {
    "steer": "pvrs.steering.interventions",
    "ablate": "pvrs.steering.interventions",
    "mean_ablate": "pvrs.steering.interventions",
    "cap": "pvrs.steering.interventions",
    "suggested_alpha": "pvrs.steering.interventions",
    "suggested_alphas": "pvrs.steering.interventions",
    "band": "pvrs.steering.interventions",
    "direction": "pvrs.steering.directions",
    "assistant_axis_direction": "pvrs.steering.directions",
    "probe_direction": "pvrs.steering.directions",
    "load_vector": "pvrs.steering.directions",
    "calibrate_tau": "pvrs.steering.residuals",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
