"""Paired timing for the benches: contenders run interleaved (A, B, A, B, ...) so a load
spike on the shared machine hits both, and every figure is reported as min/median/max."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    """min/median/max of a list of timings or ratios."""
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def paired(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Run every contender once per round, `repeat` rounds; seconds per contender per round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def ratios(slow: Sequence[float], fast: Sequence[float]) -> dict[str, float]:
    """Spread of the per-round ratio slow / fast (pairs from the same round)."""
    return spread([s / f for s, f in zip(slow, fast, strict=True)])
