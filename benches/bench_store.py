"""Store benchmarks (run by hand, not a test): streamed aggregation and stacking against a
plain Python loop and the raw read time, and `pvrs validate` over a 10,000-file tree.

    PYTHONPATH=python python benches/bench_store.py            # the issue's sizes
    PYTHONPATH=python python benches/bench_store.py --n 200    # smaller, quicker

Build the native module in release mode first (`cargo build --release --features python`,
copy target/release/lib_core.so to python/pvrs/_core.abi3.so); a debug build is ~10x slower.
Every ratio is against a baseline measured in the same run on the same files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pvrs import _core
from pvrs.store.validation import validate
from safetensors.torch import load_file, save


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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


def cat_time(paths: list[Path], repeat: int) -> float:
    args = ["cat", *map(str, paths)]
    return best_of(lambda: subprocess.run(args, stdout=subprocess.DEVNULL, check=True), repeat)


def python_loop_mean(paths: list[Path]) -> torch.Tensor:
    """What a user writes without pvrs: load each file, accumulate, divide."""
    acc = None
    for p in paths:
        t = load_file(str(p))["activations"].to(torch.float32)
        acc = t.clone() if acc is None else acc.add_(t)
    assert acc is not None
    return acc / len(paths)


def python_loop_layer(paths: list[Path], layer: int) -> torch.Tensor:
    return torch.stack([load_file(str(p))["activations"][layer].to(torch.float32) for p in paths])


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


def bench_aggregation(root: Path, n: int, layers: int, hidden: int, repeat: int) -> dict:
    results: dict = {}
    layer = layers // 2
    for name, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        paths = write_files(root / name, n, layers, hidden, dtype)
        size = sum(p.stat().st_size for p in paths)
        cat_time(paths, 1)  # warm the page cache
        raw = cat_time(paths, repeat)
        py = best_of(lambda paths=paths: python_loop_mean(paths), repeat)
        rs = best_of(lambda paths=paths: _core.aggregate_files(paths, "mean"), repeat)
        var = best_of(lambda paths=paths: _core.aggregate_files(paths, "var"), repeat)
        stack_all = best_of(lambda paths=paths: _core.stack_files(paths), repeat)
        reference = python_loop_mean(paths).numpy()
        assert np.allclose(_core.aggregate_files(paths, "mean"), reference, rtol=1e-5, atol=1e-5)
        py_layer = best_of(lambda paths=paths: python_loop_layer(paths, layer), repeat)
        rs_layer = best_of(lambda paths=paths: _core.stack_files(paths, [layer]), repeat)
        # Cold single-layer read: bytes fetched from storage for one layer vs all layers.
        evict(paths)
        before = storage_read_bytes()
        _core.stack_files(paths, [layer])
        one_layer_bytes = storage_read_bytes() - before
        evict(paths)
        before = storage_read_bytes()
        _core.stack_files(paths)
        all_layers_bytes = storage_read_bytes() - before
        results[name] = {
            "files": n,
            "shape": [layers, hidden],
            "total_mb": round(size / 1e6, 1),
            "raw_read_s": round(raw, 4),
            "raw_read_gb_s": round(size / raw / 1e9, 2),
            "python_loop_mean_s": round(py, 4),
            "pvrs_mean_s": round(rs, 4),
            "pvrs_mean_gb_s": round(size / rs / 1e9, 2),
            "speedup_vs_python_loop": round(py / rs, 2),
            "fraction_of_raw_read_bandwidth": round(raw / rs, 2),
            "pvrs_var_s": round(var, 4),
            "pvrs_stack_all_s": round(stack_all, 4),
            "python_loop_one_layer_s": round(py_layer, 4),
            "pvrs_stack_one_layer_s": round(rs_layer, 4),
            "one_layer_speedup": round(py_layer / rs_layer, 2),
            "cold_storage_mb_one_layer": round(one_layer_bytes / 1e6, 1),
            "cold_storage_mb_all_layers": round(all_layers_bytes / 1e6, 1),
        }
        print(json.dumps({name: results[name]}, indent=2), flush=True)
        shutil.rmtree(root / name)
    return results


def bench_validation(root: Path, n_files: int, layers: int, hidden: int, repeat: int) -> dict:
    """A tree of `n_files` vectors in 1,000-persona variant folders, manifests as pvrs writes."""
    per_dir = 1000
    data = save({"activations": torch.randn(layers, hidden)})
    digest = __import__("hashlib").sha256(data).hexdigest()
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
    headers = best_of(lambda: validate(tree), repeat)
    deep = best_of(lambda: validate(tree, deep=True), 1)
    report = validate(tree)
    assert report.ok and report.files_checked == n_files, report.summary()
    out = {
        "files": n_files,
        "shape": [layers, hidden],
        "headers_s": round(headers, 3),
        "deep_s": round(deep, 3),
        "tree_mb": round(n_files * len(data) / 1e6, 1),
    }
    print(json.dumps({"validate": out}, indent=2), flush=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="vectors to aggregate (default 1000)")
    parser.add_argument("--layers", type=int, default=42)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--validate-files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--sections", default="aggregate,validate,save", help="comma-separated subset to run"
    )
    args = parser.parse_args()
    info = _core.build_info()
    print(
        f"pvrs native build: {info['profile']}, rayon threads {info['rayon_threads']}, cpus {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        sections = set(args.sections.split(","))
        if "aggregate" in sections:
            bench_aggregation(Path(tmp), args.n, args.layers, args.hidden, args.repeat)
        if "validate" in sections:
            bench_validation(Path(tmp), args.validate_files, 30, 576, args.repeat)
        if "save" in sections:
            bench_saving(Path(tmp), args.n, 30, 576)


if __name__ == "__main__":
    main()
