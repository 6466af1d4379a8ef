"""`pvrs extract --ray` against a single process, on the same personas (CPU here).

Run by hand, not by CI. One local Ray (`--cpus`, default 2) is started once, outside the
timings. Modes run interleaved, `--rounds` times, each into a fresh store:
  single-T `extract` in this process with T torch threads (1, and `--cpus`)
  ray-N    `extract(..., ray=RayConfig(replicas=N))`, one CPU and one torch thread per replica;
           its wall time includes starting the replicas (each loads the model)
For each Ray mode it also reports the replicas' start-up, and the driver's overhead per
persona: the time the driver spent outside `ray.wait` (submitting, receiving, saving).

    python benches/bench_ray.py                      # built-in SmolLM2-135M, demo personas
    python benches/bench_ray.py --copies 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _timing import spread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray (default %(default)s)")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--copies", type=int, default=2, help="copies of the demo personas (more jobs)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import ray
    import torch
    from pvrs.engines import models, ray_engine
    from pvrs.extraction import inputs
    from pvrs.extraction.driver import extract

    def copy(pid: str | None, c: int) -> str | None:
        return pid if pid is None or not c else f"{pid}_{c}"

    demo, demo_qa = inputs.load_personas(None), inputs.load_qa(None)
    personas = [replace(p, id=copy(p.id, c)) for c in range(args.copies) for p in demo]
    qa = [replace(r, persona_id=copy(r.persona_id, c)) for c in range(args.copies) for r in demo_qa
          if c == 0 or r.persona_id is not None]
    started = time.perf_counter()
    ray_engine.start_local(num_cpus=args.cpus)  # on 127.0.0.1 only, as `pvrs extract --ray`
    ray_start = time.perf_counter() - started
    model, tokenizer = models.load(args.model, device="cpu")
    skeleton, _ = models.skeleton(models.ModelSpec(args.model), on_gpu=False)

    waited = [0.0]
    real_wait = ray.wait

    def timed_wait(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_wait(*a, **k)
        finally:
            waited[0] += time.perf_counter() - t

    ray.wait = timed_wait
    startup = [0.0]
    real_init = ray_engine.Cluster.__init__

    def timed_init(self: Any, *a: Any) -> None:
        t = time.perf_counter()
        real_init(self, *a)
        startup[0] = time.perf_counter() - t

    ray_engine.Cluster.__init__ = timed_init  # type: ignore[method-assign]

    def run(mode: str) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as root:
            waited[0] = startup[0] = 0.0
            t = time.perf_counter()
            if mode.startswith("single"):
                torch.set_num_threads(int(mode.split("-")[1]))
                result = extract(model, tokenizer, personas, qa, save_to=Path(root), progress=False)
            else:
                spec = models.ModelSpec(args.model, threads=1)
                config = ray_engine.RayConfig(spec, replicas=int(mode.split("-")[1]), gpus_per_replica=0)
                result = extract(skeleton, tokenizer, personas, qa, save_to=Path(root), progress=False, ray=config)
            wall = time.perf_counter() - t
            assert result.count("written") == len(personas) * 2, [o for o in result.outcomes if o.status != "written"]
            jobs = result.count("written")
            out = {"wall_s": wall, "personas_per_s": jobs / wall}
            if mode.startswith("ray"):
                loop = wall - startup[0]
                out.update(startup_s=startup[0], personas_per_s_after_startup=jobs / loop,
                           driver_ms_per_persona=1000 * (loop - waited[0]) / jobs)
            return out

    modes = [*dict.fromkeys(["single-1", f"single-{args.cpus}"]), *(f"ray-{n}" for n in args.replicas)]
    rounds: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            rounds[m].append(run(m))
    report = {
        "model": args.model, "jobs": len(personas) * 2, "samples": len(qa), "cpus": args.cpus,
        "ray_init_s": round(ray_start, 2),
        "modes": {m: {k: spread([r[k] for r in rs]) for k in rs[0]} for m, rs in rounds.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
