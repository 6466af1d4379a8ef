"""Judge throughput against the endpoint's concurrency limit: `EndpointJudge.score` on N
prompts sent to the tests' OpenAI-compatible server (tests/judge_server.py) made to answer
each request after an artificial latency, at --concurrency 1, 2, 4, 8. The ideal is
concurrency / latency answers/s; the ratio to it is what the client's threads, HTTP and
JSON cost. Levels run interleaved per round (benches/_timing.py), min/median/max reported.

Run by hand from the repository root, not by CI:

    python benches/bench_judge.py                        # 64 prompts, 50 ms latency
    python benches/bench_judge.py --latency 0.2 --prompts 128
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test server lives in tests/

from _timing import paired, spread
from pvrs.judge.endpoint import EndpointJudge

from tests.judge_server import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="prompts per run (default %(default)s)")
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request (default %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="levels (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    args = parser.parse_args()

    prompts = [f"Rate answer {i}: arr, matey." for i in range(args.prompts)]
    with serve() as server:
        server.delay = args.latency
        peaks: dict[int, int] = {}

        def run(level: int) -> None:
            server.max_in_flight = 0
            EndpointJudge(server.url, "bench", concurrency=level).score(prompts)
            peaks[level] = server.max_in_flight

        times = paired({str(c): (lambda c=c: run(c)) for c in args.concurrency}, args.rounds)

    print(f"{platform.node()} ({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
          f"{args.prompts} prompts, {args.latency * 1000:g} ms server latency, {args.rounds} rounds\n")
    print("| concurrency | answers/s (min / median / max) | ideal (c / latency) | median / ideal | peak in flight |")
    print("|---:|---|---:|---:|---:|")
    for c in args.concurrency:
        rate = spread([args.prompts / t for t in times[str(c)]])
        ideal = c / args.latency
        print(f"| {c} | {rate['min']:.1f} / {rate['median']:.1f} / {rate['max']:.1f} | {ideal:.1f} | "
              f"{rate['median'] / ideal:.2f} | {peaks[c]} |")


if __name__ == "__main__":
    main()
