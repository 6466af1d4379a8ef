"""Packaging a store into the Hub parquet layout: pvrs (Rust, streamed) vs
`datasets.Dataset.from_dict(...).to_parquet(...)` on the same vectors.

Each contender runs in its own subprocess (fresh interpreter, imports excluded from the
timing) and reports its wall time for the work and its peak RSS. Both read the same store
(page cache warmed first) and write parquet (pvrs: zstd; datasets: its default, snappy). Run by hand; needs the native module
built in release mode:

    maturin develop --release          # builds and installs pvrs._core (a release build)
    python benches/bench_package.py [--personas 1000] [--repeats 5]

The contenders alternate (pvrs, datasets, pvrs, ...) so both see the same machine load; the
summary gives min/median/max of each and of the per-pair ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _timing import ratios, spread

MODEL = "bench/model-42x3584"
MASK = "answer_mean"
VARIANT = "templated"

WORKER_PRELUDE = """
import json, resource, sys, time
from pathlib import Path
root, out, params = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
"""

PVRS_WORKER = """
from pvrs import hub
before_mib = rss_mib()
cpu_start = cpu_seconds()
start = time.perf_counter()
hub.package(params["model"], out, root_dir=root, progress=False,
            row_group_bytes=params["row_group_bytes"])
elapsed = time.perf_counter() - start
cpu = cpu_seconds() - cpu_start
"""

DATASETS_WORKER = """
import datasets
from safetensors.numpy import load_file
datasets.disable_progress_bars()
before_mib = rss_mib()
cpu_start = cpu_seconds()
start = time.perf_counter()
folder = root / params["model"].replace("/", "__") / params["mask"] / params["variant"]
manifest = json.loads((folder / "manifest.json").read_text())
ids = sorted(manifest["personas"])
L, H = manifest["num_layers"], manifest["hidden_size"]
features = datasets.Features({
    "persona_id": datasets.Value("string"),
    "name": datasets.Value("string"),
    "sample_ids": datasets.Sequence(datasets.Value("string")),
    "vector": datasets.Array2D(shape=(L, H), dtype="float32"),
})
ds = datasets.Dataset.from_dict({
    "persona_id": ids,
    "name": [manifest["personas"][p]["name"] for p in ids],
    "sample_ids": [manifest["personas"][p]["sample_ids"] for p in ids],
    "vector": [load_file(str(folder / f"{p}.safetensors"))["activations"] for p in ids],
}, features=features)
out.mkdir(parents=True)
ds.to_parquet(str(out / "templated.parquet"))  # datasets picks snappy itself
elapsed = time.perf_counter() - start
cpu = cpu_seconds() - cpu_start
"""

WORKER_EPILOGUE = """
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
written = sum(f.stat().st_size for f in out.rglob("*.parquet"))
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mib": peak_mib, "work_rss_mib": peak_mib - before_mib, "bytes": written}))
"""


def build_store(root: Path, personas: int, layers: int, hidden: int) -> None:
    import numpy as np
    from pvrs.store import PersonaVectorStore, VectorRecord

    store = PersonaVectorStore(MODEL, root_dir=root, mask_strategy=MASK)
    rng = np.random.default_rng(0)
    batch: list[VectorRecord] = []
    for i in range(personas):
        vector = rng.standard_normal((layers, hidden), dtype=np.float32)
        sample_ids = [f"q{j:03d}" for j in range(40)]
        batch.append(VectorRecord(f"persona_{i:05d}", vector, f"Persona {i}", sample_ids))
        if len(batch) == 100:
            store.save_many(VARIANT, batch)
            batch = []
    if batch:
        store.save_many(VARIANT, batch)


def run_worker(body: str, root: Path, out: Path, params: dict) -> dict:
    code = (
        textwrap.dedent(WORKER_PRELUDE) + textwrap.dedent(body) + textwrap.dedent(WORKER_EPILOGUE)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root), str(out), json.dumps(params)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def warm_page_cache(root: Path) -> None:
    for path in root.rglob("*.safetensors"):
        path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--personas", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=42)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--row-group-mb", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=3, help="paired runs per contender")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the store (default: a temp dir)"
    )
    args = parser.parse_args()

    from pvrs import _core

    if _core.build_info()["profile"] != "release":
        print(
            "warning: pvrs._core is a debug build; timings are not representative", file=sys.stderr
        )

    work = Path(tempfile.mkdtemp(prefix="pvrs-bench-", dir=args.workdir))
    try:
        root = work / "activations"
        size_mb = args.personas * args.layers * args.hidden * 4 / 1e6
        print(
            f"store: {args.personas} personas x ({args.layers}, {args.hidden}) float32 = {size_mb:.0f} MB"
        )
        build_store(root, args.personas, args.layers, args.hidden)
        params = {
            "model": MODEL,
            "mask": MASK,
            "variant": VARIANT,
            "row_group_bytes": int(args.row_group_mb * (1 << 20)),
        }
        runs: dict[str, list[dict]] = {"pvrs": [], "datasets": []}
        for r in range(args.repeats):
            for name, body in (("pvrs", PVRS_WORKER), ("datasets", DATASETS_WORKER)):
                out = work / f"out-{name}-{r}"
                warm_page_cache(root)
                runs[name].append(run_worker(body, root, out, params))
                shutil.rmtree(out)
        print(f"{args.repeats} paired runs, min/median/max:")
        for name, rs in runs.items():
            summary = {
                key: spread([x[key] for x in rs])
                for key in ("seconds", "cpu_seconds", "peak_rss_mib", "work_rss_mib")
            }
            print(f"{name:9s} {json.dumps(summary)} output {rs[0]['bytes'] / 1e6:.1f} MB")
        pv, ds = runs["pvrs"], runs["datasets"]
        wall = ratios([x["seconds"] for x in ds], [x["seconds"] for x in pv])
        cpu = ratios([x["cpu_seconds"] for x in ds], [x["cpu_seconds"] for x in pv])
        print(f"speed-up pvrs vs datasets (per pair): wall {wall}, CPU {cpu}")
        print(
            f"memory for the work: pvrs {max(x['work_rss_mib'] for x in pv):.0f} MiB (row group {args.row_group_mb:.0f} MiB), "
            f"datasets {max(x['work_rss_mib'] for x in ds):.0f} MiB (data {size_mb / 1.048576:.0f} MiB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
