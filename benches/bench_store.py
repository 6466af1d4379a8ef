"""Store benchmarks (run by hand, not a test): streamed aggregation and stacking against the
loops a user would write (numpy: `np.fromfile` per tensor, float32 accumulation; torch:
`safetensors.torch.load_file` + add, at one thread and at torch's default) and the raw
`np.fromfile` read of the same bytes, and `pvrs validate --deep` against a single-threaded
Python read + `hashlib.sha256` loop over the same tree.

    maturin develop --release                        # builds and installs pvrs._core (release)
    python benches/bench_store.py                    # the issue's sizes
    python benches/bench_store.py --n 200            # smaller, quicker
    python benches/bench_store.py --busy             # the same beside one busy loop per core
    python benches/bench_store.py --torch            # also the torch loops (slow when loaded)
    python benches/bench_store.py --sections scaling # save_many in batches of 100, 1k / 10k
    python benches/bench_store.py --sections linear  # aggregation per file at 1k / 10k files

Contenders run interleaved, `--repeat` rounds, page cache warm; every figure is min/median/max
over the rounds and every ratio is per round (both sides measured back to back). The default
sections (aggregate, validate) take under 2 minutes on a 2-core box; each prints one summary
line per target: the ratio, min/median/max, beside its limit (the raw read, the Python loop)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from _timing import paired, ratios, spread
from pvrs import _core
from pvrs.store.validation import validate
from safetensors.torch import load_file, save

BUSY = False  # set by --busy: every timed section runs beside one busy loop per core


@contextmanager
def load() -> Iterator[None]:
    """With --busy, one `while :; do :; done` shell per core for the timed section, stopped after."""
    loops = (
        [
            subprocess.Popen(["sh", "-c", "while :; do :; done"])
            for _ in range(os.cpu_count() or 1)
        ]
        if BUSY
        else []
    )
    try:
        yield
    finally:
        for p in loops:
            p.kill()
            p.wait()


def target_line(label: str, ratio: dict[str, float], limit: str, target: float) -> None:
    """One line: the ratio's min/median/max beside the limit it is measured against."""
    median = ratio["median"]
    verdict = "met" if median >= target else "NOT met"
    print(
        f"{label}: {ratio['min']:.2f} / {median:.2f} / {ratio['max']:.2f} x {limit} "
        f"(target >= {target}, median {verdict}{', loaded' if BUSY else ''})",
        flush=True,
    )


def write_files(folder: Path, n: int, layers: int, hidden: int, dtype: torch.dtype) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(layers, hidden, generator=gen)
    paths = []
    for i in range(n):
        path = folder / f"persona_{i:05d}.safetensors"
        path.write_bytes(save({"activations": (base + 0.01 * i).to(dtype)}))
        paths.append(path)
    return paths


def raw_read(paths: list[Path]) -> None:
    """The floor: every byte of every file read once with `np.fromfile`, nothing computed."""
    for p in paths:
        np.fromfile(p, dtype=np.uint8)


def numpy_tensor(path: Path) -> np.ndarray:
    """One safetensors tensor as float32 with `np.fromfile` (numpy has no bfloat16: widen the bits)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(size))["activations"]
    offset = 8 + size + info["data_offsets"][0]
    count = int(np.prod(info["shape"]))
    if info["dtype"] == "BF16":
        bits = np.fromfile(path, dtype=np.uint16, count=count, offset=offset)
        return (bits.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
    return np.fromfile(path, dtype=np.float32, count=count, offset=offset).reshape(info["shape"])


def numpy_loop_mean(paths: list[Path]) -> np.ndarray:
    """What a user writes with numpy: read each tensor, accumulate in float32, divide."""
    acc = numpy_tensor(paths[0]).copy()
    for p in paths[1:]:
        acc += numpy_tensor(p)
    return acc / len(paths)


def torch_loop_mean(paths: list[Path]) -> torch.Tensor:
    """The same with torch: `load_file` each file, accumulate in float32, divide."""
    acc = None
    for p in paths:
        t = load_file(str(p))["activations"].to(torch.float32)
        acc = t.clone() if acc is None else acc.add_(t)
    assert acc is not None
    return acc / len(paths)


def torch_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` run with torch limited to `n` threads (restored after)."""

    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def python_loop_layer(paths: list[Path], layer: int) -> np.ndarray:
    return np.stack([numpy_tensor(p)[layer] for p in paths])


def evict(paths: list[Path]) -> None:
    """Drop these files (only these) from the page cache, so the next read hits storage."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def storage_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return -1


def bench_aggregation(
    root: Path, n: int, layers: int, hidden: int, repeat: int, with_torch: bool
) -> dict:
    results: dict = {}
    layer = layers // 2
    default_threads = torch.get_num_threads()
    for name, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        paths = write_files(root / name, n, layers, hidden, dtype)
        size = sum(p.stat().st_size for p in paths)
        raw_read(paths)  # warm the page cache
        reference = numpy_loop_mean(paths)
        assert np.allclose(_core.aggregate_files(paths, "mean"), reference, rtol=1e-4, atol=1e-4)
        with load():
            times = paired(
                {
                    "raw_np_fromfile": lambda paths=paths: raw_read(paths),
                    "numpy_loop_mean": lambda paths=paths: numpy_loop_mean(paths),
                    **(
                        {
                            "torch_loop_mean_1_thread": torch_threads(
                                1, lambda paths=paths: torch_loop_mean(paths)
                            ),
                            f"torch_loop_mean_{default_threads}_threads": torch_threads(
                                default_threads, lambda paths=paths: torch_loop_mean(paths)
                            ),
                        }
                        if with_torch
                        else {}
                    ),
                    "pvrs_mean": lambda paths=paths: _core.aggregate_files(paths, "mean"),
                    "pvrs_var": lambda paths=paths: _core.aggregate_files(paths, "var"),
                    "pvrs_stack_all": lambda paths=paths: _core.stack_files(paths),
                    "numpy_loop_one_layer": lambda paths=paths: python_loop_layer(paths, layer),
                    "pvrs_stack_one_layer": lambda paths=paths: _core.stack_files(paths, [layer]),
                },
                repeat,
            )
        # Cold single-layer read: bytes fetched from storage for one layer vs all layers.
        evict(paths)
        before = storage_read_bytes()
        _core.stack_files(paths, [layer])
        one_layer_bytes = storage_read_bytes() - before
        evict(paths)
        before = storage_read_bytes()
        _core.stack_files(paths)
        all_layers_bytes = storage_read_bytes() - before
        pvrs = times["pvrs_mean"]
        results[name] = {
            "files": n,
            "shape": [layers, hidden],
            "total_mb": round(size / 1e6, 1),
            "seconds": {key: spread(t) for key, t in times.items()},
            "pvrs_mean_gb_s": round(size / min(pvrs) / 1e9, 2),
            "pvrs_mean_speedup_vs_numpy_loop": ratios(times["numpy_loop_mean"], pvrs),
            **(
                {
                    "pvrs_mean_speedup_vs_torch_loop_1_thread": ratios(
                        times["torch_loop_mean_1_thread"], pvrs
                    )
                }
                if with_torch
                else {}
            ),
            "pvrs_mean_fraction_of_raw_read": ratios(times["raw_np_fromfile"], pvrs),
            "one_layer_speedup_vs_numpy_loop": ratios(
                times["numpy_loop_one_layer"], times["pvrs_stack_one_layer"]
            ),
            "cold_storage_mb_one_layer": round(one_layer_bytes / 1e6, 1),
            "cold_storage_mb_all_layers": round(all_layers_bytes / 1e6, 1),
        }
        print(json.dumps({name: results[name]}, indent=2), flush=True)
        target_line(
            f"{name} pvrs mean vs the numpy loop",
            results[name]["pvrs_mean_speedup_vs_numpy_loop"],
            "the Python (numpy) loop",
            1.5,
        )
        target_line(
            f"{name} pvrs mean vs the raw read",
            results[name]["pvrs_mean_fraction_of_raw_read"],
            "the raw read (np.fromfile, nothing computed)",
            0.9,
        )
        shutil.rmtree(root / name)
    return results


def bench_linear(root: Path, n: int, layers: int, hidden: int, repeat: int) -> dict:
    """Per-file cost of `aggregate_files` mean at `n` and `10 * n` files (the first `n` of the
    same folder), each paired with the raw `np.fromfile` read of the same files."""
    results: dict = {}
    for name, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        paths = write_files(root / name, 10 * n, layers, hidden, dtype)
        raw_read(paths)  # warm the page cache (10,000 (42, 3584) f32 files are 6 GB)
        small = paths[:n]
        times = paired(
            {
                "raw_small": lambda small=small: raw_read(small),
                "pvrs_small": lambda small=small: _core.aggregate_files(small, "mean"),
                "raw_large": lambda paths=paths: raw_read(paths),
                "pvrs_large": lambda paths=paths: _core.aggregate_files(paths, "mean"),
            },
            repeat,
        )
        per_file_us = {
            key: [1e6 * t / (n if key.endswith("small") else 10 * n) for t in ts]
            for key, ts in times.items()
        }
        results[name] = {
            "files": [n, 10 * n],
            "shape": [layers, hidden],
            "seconds": {key: spread(t) for key, t in times.items()},
            "per_file_us": {key: spread(t) for key, t in per_file_us.items()},
            "per_file_large_over_small": ratios(
                per_file_us["pvrs_large"], per_file_us["pvrs_small"]
            ),
            "raw_read_fraction_small": ratios(times["raw_small"], times["pvrs_small"]),
            "raw_read_fraction_large": ratios(times["raw_large"], times["pvrs_large"]),
        }
        print(json.dumps({f"linear_{name}": results[name]}, indent=2), flush=True)
        shutil.rmtree(root / name)
    return results


def bench_validation(root: Path, n_files: int, layers: int, hidden: int, repeat: int) -> dict:
    """A tree of `n_files` vectors in 1,000-persona variant folders, manifests as pvrs writes."""
    per_dir = 1000
    data = save({"activations": torch.randn(layers, hidden)})
    digest = hashlib.sha256(data).hexdigest()
    tree = root / "tree"
    for d in range((n_files + per_dir - 1) // per_dir):
        folder = tree / "org__model" / "answer_mean" / f"variant{d:02d}"
        folder.mkdir(parents=True)
        personas = {}
        for i in range(min(per_dir, n_files - d * per_dir)):
            (folder / f"p{i:05d}.safetensors").write_bytes(data)
            personas[f"p{i:05d}"] = {
                "name": f"P{i}",
                "sample_ids": [f"q{k}" for k in range(20)],
                "sha256": digest,
            }
        manifest = {
            "num_layers": layers,
            "hidden_size": hidden,
            "variant": folder.name,
            "personas": personas,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
    files = sorted(tree.rglob("*.safetensors"))
    with load():
        times = paired(
            {
                "headers": lambda: validate(tree),
                "python_read_sha256_loop": lambda: [
                    hashlib.sha256(p.read_bytes()).hexdigest() for p in files
                ],
                "deep": lambda: validate(tree, deep=True),
            },
            repeat,
        )
    report = validate(tree, deep=True)
    assert report.ok and report.files_checked == n_files, report.summary()
    out = {
        "files": n_files,
        "shape": [layers, hidden],
        "tree_mb": round(n_files * len(data) / 1e6, 1),
        "seconds": {key: spread(t) for key, t in times.items()},
        "deep_speedup_vs_python_sha256_loop": ratios(
            times["python_read_sha256_loop"], times["deep"]
        ),
    }
    print(json.dumps({"validate": out}, indent=2), flush=True)
    target_line(
        "validate --deep vs the Python loop",
        out["deep_speedup_vs_python_sha256_loop"],
        "the one-thread Python read + sha256 loop",
        1.8,
    )
    return out


def bench_saving(root: Path, n: int, layers: int, hidden: int) -> dict:
    """`save_many` (one manifest write) vs a `save` loop (a manifest rewrite per persona)."""
    from pvrs.store import PersonaVectorStore, VectorRecord

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, layers, hidden)).astype(np.float32)
    sample_ids = [f"question-{k:03d}" for k in range(20)]
    batch = PersonaVectorStore("org/model", root_dir=root / "batch")
    start = time.perf_counter()
    batch.save_many(
        "templated", [VectorRecord(f"p{i:05d}", vectors[i], f"P{i}", sample_ids) for i in range(n)]
    )
    many = time.perf_counter() - start
    loop = PersonaVectorStore("org/model", root_dir=root / "loop")
    start = time.perf_counter()
    for i in range(n):
        loop.save(f"p{i:05d}", "templated", vectors[i], name=f"P{i}", sample_ids=sample_ids)
    single = time.perf_counter() - start
    out = {
        "personas": n,
        "shape": [layers, hidden],
        "save_many_s": round(many, 3),
        "save_loop_s": round(single, 3),
        "ratio": round(single / many, 2),
    }
    print(json.dumps({"saving": out}, indent=2), flush=True)
    return out


def bench_save_scaling(root: Path, sizes: list[int], batch: int, layers: int, hidden: int) -> dict:
    """Building a store with `save_many` in batches: seconds per 1,000 personas over the whole
    build and for its last 1,000 (what a batch costs once the store is big), wall and this
    process's CPU (the CPU figure leaves out fsync waits, which dominate wall on a busy disk)."""
    from pvrs.store import PersonaVectorStore, VectorRecord

    vector = np.random.default_rng(0).standard_normal((layers, hidden)).astype(np.float32)
    sample_ids = [f"question-{k:03d}" for k in range(20)]
    out = {}
    for n in sizes:
        store = PersonaVectorStore("org/model", root_dir=root / f"scaling-{n}")
        times, cpu = [], []
        for start in range(0, n, batch):
            records = [
                VectorRecord(f"p{i:05d}", vector, f"P{i}", sample_ids)
                for i in range(start, min(start + batch, n))
            ]
            began, began_cpu = time.perf_counter(), time.process_time()
            store.save_many("templated", records)
            times.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
        tail = max(1, 1000 // batch)
        out[n] = {
            "s_per_1000": round(sum(times) / n * 1000, 3),
            "last_1000_s_per_1000": round(sum(times[-tail:]) / (tail * batch) * 1000, 3),
            "cpu_s_per_1000": round(sum(cpu) / n * 1000, 3),
            "last_1000_cpu_s_per_1000": round(sum(cpu[-tail:]) / (tail * batch) * 1000, 3),
        }
        shutil.rmtree(root / f"scaling-{n}")
    print(
        json.dumps({"save_scaling": {"batch": batch, "shape": [layers, hidden], **out}}, indent=2),
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="vectors to aggregate (default 1000)")
    parser.add_argument("--layers", type=int, default=42)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--validate-files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--torch", action="store_true", help="also time the torch loops (at 1 and default threads)"
    )
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--sections",
        default="aggregate,validate",
        help="comma-separated subset of aggregate,linear,validate,save,scaling",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="time beside one busy loop per core (started for each timed section, stopped after)",
    )
    args = parser.parse_args()
    global BUSY
    BUSY = args.busy
    info = _core.build_info()
    print(
        f"pvrs native build: {info['profile']}, rayon threads {info['rayon_threads']}, cpus {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        sections = set(args.sections.split(","))
        if "aggregate" in sections:
            bench_aggregation(
                Path(tmp), args.n, args.layers, args.hidden, args.repeat, args.torch
            )
        if "linear" in sections:
            bench_linear(Path(tmp), args.n, args.layers, args.hidden, args.repeat)
        if "validate" in sections:
            bench_validation(Path(tmp), args.validate_files, 30, 576, args.repeat)
        if "save" in sections:
            bench_saving(Path(tmp), args.n, 30, 576)
        if "scaling" in sections:
            bench_save_scaling(Path(tmp), [1000, 10_000], 100, 30, 576)


if __name__ == "__main__":
    main()
