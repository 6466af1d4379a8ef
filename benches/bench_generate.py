"""`pvrs extract --generate` answers with each engine on the same prompts: transformers
(`model.generate`, one batch of `--batch-size` questions at a time) and vLLM (every persona's
questions in one engine run, continuous batching, prefix caching).

Run by hand, not by CI, in a venv with vLLM (on CPU: `.ci/vllm-lane build` prints one). Each
engine is started once, outside the timings (its start-up is reported apart); then the two
generate the same answers-to-be, interleaved, `--rounds` times. Reported per engine: wall
seconds, answers/s and generated tokens/s (min/median/max), and the per-round ratio vLLM / HF.
Sampling is greedy by default so both engines generate comparable lengths; `--temperature`
changes that.

    python benches/bench_generate.py                       # built-in SmolLM2-135M, demo personas
    python benches/bench_generate.py --personas 4 --questions 16 --max-new-tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import time

from _timing import ratios, spread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--personas", type=int, default=2, help="first N demo personas (default %(default)s)")
    ap.add_argument("--questions", type=int, default=8, help="questions per persona (default %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=8, help="transformers: questions per generate call")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile (faster start)")
    args = ap.parse_args()

    import torch
    from pvrs.engines import models
    from pvrs.engines.generation import answer_job
    from pvrs.engines.vllm_engine import VllmConfig, VllmEngine
    from pvrs.extraction import inputs
    from pvrs.extraction.generate import SamplingConfig, answer_request

    personas = [p for p in inputs.load_personas(None) if not p.is_baseline][: args.personas]
    qa = inputs.load_qa(None)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, seed=0, batch_size=args.batch_size)

    started = time.perf_counter()
    model, tokenizer = models.load(args.model, dtype=args.dtype, device="cpu")
    hf_start = time.perf_counter() - started
    asks = [answer_request(tokenizer, p, "templated", inputs.qa_for_persona(qa, p)[: args.questions]) for p in personas]
    spec = models.ModelSpec(args.model, dtype=args.dtype)
    meta, _ = models.skeleton(spec, on_gpu=False)
    engine = VllmEngine(VllmConfig(spec, enforce_eager=args.enforce_eager), meta, tokenizer,
                        list(range(model.config.num_hidden_layers)))
    started = time.perf_counter()
    list(engine.answer(asks[:1], SamplingConfig(1, 0.0), lambda n: None))  # start vLLM outside the timings
    vllm_start = time.perf_counter() - started

    def tokens(rows: list) -> int:
        return sum(len(tokenizer(r.answer, add_special_tokens=False)["input_ids"]) for r in rows)

    times: dict[str, list[float]] = {"hf": [], "vllm": []}
    generated: dict[str, list[int]] = {"hf": [], "vllm": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        rows = [r for a in asks for r in answer_job(model, tokenizer, a, sampling)]
        times["hf"].append(time.perf_counter() - t)
        generated["hf"].append(tokens(rows))
        t = time.perf_counter()
        rows = [r for _, got in engine.answer(asks, sampling, lambda n: None) for r in got]
        times["vllm"].append(time.perf_counter() - t)
        generated["vllm"].append(tokens(rows))
    engine.close()

    n_answers = sum(len(a.questions) for a in asks)
    report = {
        "model": args.model, "dtype": args.dtype, "answers": n_answers, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "torch_threads": torch.get_num_threads(),
        "start_s": {"hf": round(hf_start, 2), "vllm": round(vllm_start, 2)},
    }
    for name in times:
        report[name] = {
            "seconds": spread(times[name]),
            "answers_per_s": spread([n_answers / s for s in times[name]]),
            "tokens_per_s": spread([g / s for g, s in zip(generated[name], times[name], strict=True)]),
            "tokens": generated[name],
        }
    report["hf_time_over_vllm_time"] = ratios(times["hf"], times["vllm"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
