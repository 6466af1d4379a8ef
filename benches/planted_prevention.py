"""The planted preventative-steering experiment (issue 27's proof), with the real commands.

On the built-in model (SmolLM2-135M-Instruct, fp32, CPU): extract the pirate_captain vector
(`pvrs extract`, into the work folder), LoRA fine-tune on `tests/data/planted/pirate_sft.jsonl`
(48 questions answered in heavy pirate speech) with and without `--prevent
pirate_captain@LAYER:ALPHA`, then `pvrs shift` of both adapters against the base. Prints, per
seed, the shift along the vector at LAYER (last prompt token and answer mean; base = 0) and
the final loss (mean of the last `--loss-window` logged steps, the steered loss for the
prevented run). tests/test_training_planted.py runs the same code at the size that the README
reports.

    python benches/planted_prevention.py                          # 40 steps, seeds 0 and 1
    python benches/planted_prevention.py --steps 60 --seeds 0 --alpha 0.1x --work /tmp/planted
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "planted" / "pirate_sft.jsonl"
MODEL = "smollm2-135m"
VECTOR = "pirate_captain"
COMMON = ["--model", MODEL, "--device", "cpu", "--dtype", "float32"]

Runner = Callable[[list[str]], None]


@dataclass(frozen=True)
class Outcome:
    """One fine-tune: its shift at the layer (tuned minus base, on the unit vector) and final loss."""

    seed: int
    run: str
    prompt_last: float
    answer_mean: float
    loss: float


def cli(argv: list[str]) -> None:
    """Run `pvrs ARGV` as a user would: its own process; a failure stops the experiment."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pvrs", *argv], check=True)
    print(f"  pvrs {argv[0]}: {time.perf_counter() - started:.0f} s", file=sys.stderr)


def final_loss(run: Path, window: int) -> float:
    with (run / "loss.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    tail = losses[-window:]
    return sum(tail) / len(tail)


def shifts(path: Path, layer: int) -> dict[tuple[str, str], float]:
    """(tuned, measure) -> projection at the layer, from `pvrs shift`'s shift.csv."""
    with path.open() as f:
        return {(r["tuned"], r["measure"]): float(r["projection"]) for r in csv.DictReader(f) if int(r["layer"]) == layer}


def experiment(
    work: Path,
    steps: int,
    seeds: Sequence[int],
    *,
    layer: int = 15,
    alpha: str = "0.2x",
    loss_window: int = 5,
    source: str | None = None,
    run: Runner = cli,
) -> list[Outcome]:
    """Plain and prevented fine-tunes per seed, measured by `pvrs shift` at `layer`."""
    if source is None:
        source = str(work / "activations")
        run(["extract", *COMMON, "--persona-id", VECTOR, "baseline_assistant", "--variants", "templated",
             "--output-dir", source])
    store = ["--source", source]
    outcomes = []
    for seed in seeds:
        runs = {"plain": [], "prevented": ["--prevent", f"{VECTOR}@{layer}:{alpha}"]}
        for name, extra in runs.items():
            run(["finetune", str(DATA), *COMMON, *store, "--lora", "--max-steps", str(steps), "--seed", str(seed),
                 "--save-steps", str(steps), "--out", str(work / f"seed{seed}" / name), *extra])
        out = work / f"seed{seed}" / "shift"
        run(["shift", *COMMON, *store, "--tuned", *(str(work / f"seed{seed}" / n / "adapter") for n in runs),
             "--vector", VECTOR, "--layers", str(layer), "--output-dir", str(out)])
        table = shifts(out / "shift.csv", layer)
        for name in runs:
            tuned = f"{name}/adapter"
            outcomes.append(Outcome(seed, name, table[(tuned, "prompt_last")], table[(tuned, "answer_mean")],
                                    final_loss(work / f"seed{seed}" / name, loss_window)))
    return outcomes


def report(outcomes: Sequence[Outcome]) -> str:
    lines = ["| seed | run | final loss | shift, last prompt token | shift, answer mean |", "|---|---|---|---|---|"]
    for seed in sorted({o.seed for o in outcomes}):
        lines.append(f"| {seed} | base | - | 0 | 0 |")
        lines += [f"| {seed} | {o.run} | {o.loss:.3f} | {o.prompt_last:+.1f} | {o.answer_mean:+.1f} |"
                  for o in outcomes if o.seed == seed]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--alpha", default="0.2x", help="--prevent's ALPHA (default %(default)s)")
    parser.add_argument("--loss-window", type=int, default=5, help="final loss: mean of the last N steps")
    parser.add_argument("--source", help="a store holding pirate_captain for the model (default: extract one)")
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        work = Path(args.work or tmp)
        outcomes = experiment(work, args.steps, args.seeds, layer=args.layer, alpha=args.alpha,
                              loss_window=args.loss_window, source=args.source)
    print(f"{args.steps} steps, --prevent {VECTOR}@{args.layer}:{args.alpha}, shift at block {args.layer}")
    print(report(outcomes))


if __name__ == "__main__":
    main()
