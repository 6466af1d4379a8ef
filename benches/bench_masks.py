"""Rust batch mask builder against the memory it must touch and the plain-Python reference.

    maturin develop --release          # builds and installs pvrs._core (a release build)
    python benches/bench_masks.py [--samples 3000] [--repeat 9] [--reference-samples 100]

Synthetic chat prompts of 300-2,000 tokens (zero-width BOS, special turn markers, system,
question and answer turns, content tokens 1-6 characters wide), the same shape as the
criterion bench `benches/spans.rs`, with int64 offsets as `prepare_inputs` passes them.

Three paired comparisons (contenders interleaved, every figure min/median/max over rounds,
every ratio per round), each at one rayon thread and at the default (a child process per
thread count, since rayon's pool is fixed at its first use):
- the limit: reading the offsets once (`offsets.sum()`) plus filling a fresh output of the
  same size (`np.empty(...).fill(False)`), the memory any builder must touch;
- the builder on all eight strategies (offsets in, numpy masks and token spans out);
- the builder against the plain-Python reference (`pvrs.extraction.reference`, per sample,
  one token at a time) on the first `--reference-samples` samples, outputs checked equal."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from _timing import paired, ratios, spread
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
        np.ascontiguousarray(np.concatenate(offsets).astype(np.int64)),
        lengths.astype(np.int64),
        np.array(spans, dtype=np.int64),
        np.array(text_lens, dtype=np.int64),
        np.array(special, dtype=bool),
    )


def measure(args: argparse.Namespace) -> dict:
    """One thread count's paired figures (this process's rayon pool)."""
    offsets, lengths, spans, text_lens, special = synthetic(args.samples)
    names = [s.value for s in ALL_STRATEGIES]
    ids = [f"q{i}" for i in range(args.samples)]

    def build(n: int):
        t = int(lengths[:n].sum())
        return _core.build_token_masks(
            offsets[:t], lengths[:n], spans[:n], text_lens[:n], names,
            special=special[:t], sample_ids=ids[:n], template="synthetic",
        )

    def limit() -> None:
        offsets.sum()
        np.empty((len(names), len(offsets)), dtype=bool).fill(False)

    main = paired({"limit": limit, "rust": lambda: build(args.samples)}, args.repeat)
    n_ref = args.reference_samples
    t_ref = int(lengths[:n_ref].sum())

    def python_reference():
        return reference.build_token_masks(
            offsets[:t_ref], lengths[:n_ref], spans[:n_ref], text_lens[:n_ref], names,
            special=special[:t_ref], sample_ids=ids[:n_ref], template="synthetic",
        )

    for a, b in zip(build(n_ref), python_reference(), strict=True):
        np.testing.assert_array_equal(a, b)
    ref = paired({"python": python_reference, "rust": lambda: build(n_ref)}, max(3, args.repeat // 3))
    return {
        "threads": _core.build_info()["rayon_threads"],
        "tokens": int(lengths.sum()),
        "reference_tokens": t_ref,
        "limit_ms": spread([t * 1e3 for t in main["limit"]]),
        "rust_ms": spread([t * 1e3 for t in main["rust"]]),
        "rust_over_limit": ratios(main["rust"], main["limit"]),
        "python_ms": spread([t * 1e3 for t in ref["python"]]),
        "rust_subset_ms": spread([t * 1e3 for t in ref["rust"]]),
        "python_over_rust": ratios(ref["python"], ref["rust"]),
    }


def show(spread_: dict[str, float], unit: str = "") -> str:
    return f"{spread_['min']:.2f} / {spread_['median']:.2f} / {spread_['max']:.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--reference-samples", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    info = _core.build_info()
    print(f"{args.samples} samples x {len(ALL_STRATEGIES)} strategies, int64 offsets; native build "
          f"{info['profile']}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("figures: min / median / max over paired rounds")
    for threads in ("1", str(info["rayon_threads"])):
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        print(f"\nrayon threads: {r['threads']}  ({r['tokens']:,} tokens)")
        print(f"  limit (read offsets + fill output): {show(r['limit_ms'], ' ms')}")
        print(f"  rust build_token_masks            : {show(r['rust_ms'], ' ms')}")
        print(f"  rust / limit                      : {show(r['rust_over_limit'], 'x')}")
        print(f"  on {args.reference_samples} samples ({r['reference_tokens']:,} tokens): python reference "
              f"{show(r['python_ms'], ' ms')}, rust {show(r['rust_subset_ms'], ' ms')}, "
              f"python / rust {show(r['python_over_rust'], 'x')} (outputs identical)")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
