"""Rust batch mask builder vs the plain-Python reference, all eight strategies.

    maturin develop --release          # builds and installs pvrs._core (a release build)
    python benches/bench_masks.py [--samples 10000] [--repeats 5]

Synthetic chat prompts of 300-2,000 tokens (zero-width BOS, special turn markers, system,
question and answer turns, content tokens 1-6 characters wide), the same shape as the
criterion bench `benches/spans.rs`. Prints both timings, checks the outputs agree and
prints the speed-up measured in this run."""

from __future__ import annotations

import argparse
import time

import numpy as np
from pvrs import _core
from pvrs.extraction import reference
from pvrs.extraction.masks import ALL_STRATEGIES


def synthetic(n_samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(300, 2001, size=n_samples)
    offsets, spans, special, text_lens = [], [], [], []
    for n in lengths:
        n_sys, n_q = int(rng.integers(20, 120)), int(rng.integers(10, 50))
        n_ans = int(n) - 5 - n_sys - n_q
        widths, flags = [0], [True]  # zero-width BOS
        bounds = []
        for count in (n_sys, n_q, n_ans):
            widths.append(12)
            flags.append(True)
            bounds.append((len(widths), len(widths) + count))
            widths.extend(rng.integers(1, 7, size=count).tolist())
            flags.extend([False] * count)
        widths.append(12)
        flags.append(True)
        ends = np.cumsum(widths)
        starts = ends - np.asarray(widths)
        offs = np.stack([starts, ends], axis=1)
        offs[0] = (0, 0)
        row = []
        for first, end in bounds:
            row += [int(offs[first, 0]), int(offs[end - 1, 1])]
        offsets.append(offs)
        spans.append(row)
        special += flags
        text_lens.append(int(ends[-1]))
    return (
        np.ascontiguousarray(np.concatenate(offsets).astype(np.uint32)),
        lengths.astype(np.int64),
        np.array(spans, dtype=np.int64),
        np.array(text_lens, dtype=np.int64),
        np.array(special, dtype=bool),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    offsets, lengths, spans, text_lens, special = synthetic(args.samples)
    names = [s.value for s in ALL_STRATEGIES]
    ids = [f"q{i}" for i in range(args.samples)]
    call = (offsets, lengths, spans, text_lens, names)
    kwargs = {"special": special, "sample_ids": ids, "template": "synthetic"}
    info = _core.build_info()
    print(f"{args.samples} samples, {int(lengths.sum()):,} tokens, {len(names)} strategies; "
          f"native build {info['profile']}, {info['rayon_threads']} rayon threads")

    rust_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rust = _core.build_token_masks(*call, **kwargs)
        rust_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = reference.build_token_masks(*call, **kwargs)
    ref_time = time.perf_counter() - t0
    for a, b in zip(rust, ref, strict=True):
        np.testing.assert_array_equal(a, b)

    best = min(rust_times)
    tokens = int(lengths.sum())
    print(f"rust      best of {args.repeats}: {best * 1e3:9.1f} ms  ({tokens / best / 1e6:7.1f} M tokens/s)")
    print(f"reference once     : {ref_time * 1e3:9.1f} ms  ({tokens / ref_time / 1e6:7.2f} M tokens/s)")
    print(f"speed-up: {ref_time / best:.0f}x (outputs identical)")


if __name__ == "__main__":
    main()
