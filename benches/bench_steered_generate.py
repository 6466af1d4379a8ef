"""Answers/s of `pvrs eval`'s grid on each engine: 3 layers x 4 alphas x N questions plus the
unsteered baseline ((3 x 4 + 1) x N answers), with transformers hooks (`--engine hf`: one cell
after another, one question at a time, as `pvrs eval` runs them) and on vLLM (`--engine vllm`:
every cell's questions in one batch, each request with its own steering spec). Both go through
the command's own `run_eval` (no judge). vLLM is started once, outside the timings (start-up
reported apart); the engines alternate `--rounds` times. Reported per engine: seconds, answers/s
and generated tokens/s (min/median/max), the per-round ratio HF time / vLLM time, and how many
answers the engines gave alike (greedy; in fp32 they should all agree).

Run by hand, not by CI, in a venv with vLLM (on CPU: `.ci/vllm-lane build` prints one):

    python benches/bench_steered_generate.py                  # built-in SmolLM2-135M, fp32, CPU
    python benches/bench_steered_generate.py --questions 4 --rounds 3
    python benches/bench_steered_generate.py --gpu            # Qwen2.5-7B config, bf16, random weights

`--gpu`: a real-size config with random weights (vLLM loads it with `load_format="dummy"`), the
built-in tokenizer (or `--tokenizer DIR`); no downloads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _timing import ratios, spread
from bench_extract import CONFIGS, load_model

ALPHAS = (0.25, 0.5, 1.0, 2.0)  # fractions of each layer's median residual norm (`--relative`)


class _NoJudge:
    """Scores nothing: the bench times the answers only."""

    id = "none"

    def score(self, prompts: Any, on_score: Any = None, mode: str = "0-100") -> list[None]:
        return [None] * len(prompts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="Qwen2.5-7B config, bf16, random weights, on CUDA")
    ap.add_argument("--model", help=f"built-in/HF model or one of {', '.join(CONFIGS)} (default smollm2-135m; with --gpu qwen2.5-7b)")
    ap.add_argument("--tokenizer", help="folder of saved tokenizer files (default: the built-in SmolLM2's)")
    ap.add_argument("--questions", type=int, default=2, help="questions per cell (default %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6, help="vLLM's share (transformers holds its own copy)")
    args = ap.parse_args()

    import torch
    from pvrs.cli.steering_run import answer_requests
    from pvrs.engines.models import ModelSpec
    from pvrs.engines.vllm_answers import steerable
    from pvrs.engines.vllm_engine import VllmConfig, version
    from pvrs.extraction.generate import DEFAULT_PROMPTS, SamplingConfig
    from pvrs.judge.evaluation import DIRECTION, EvalSetup, grid, run_eval
    from pvrs.judge.rubrics import load_rubric
    from pvrs.steering.interventions import suggested_alphas

    name = args.model or ("qwen2.5-7b" if args.gpu else "smollm2-135m")
    device, dtype = ("cuda", "bfloat16") if args.gpu else ("cpu", "float32")
    started = time.perf_counter()
    model, tokenizer, device = load_model(name, device, dtype, args.tokenizer)
    hf_start = time.perf_counter() - started
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    layers = [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
    vector = np.random.default_rng(0).standard_normal((n_layers, hidden)).astype(np.float32)
    vector /= np.linalg.norm(vector, axis=1, keepdims=True)
    cells = grid(layers, ALPHAS, suggested_alphas(model, tokenizer, vector, layers, 1.0), prompted=False)
    questions = [f"{DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)]}{'' if i < len(DEFAULT_PROMPTS) else f' ({i})'}"
                 for i in range(args.questions)]
    setup = EvalSetup(questions, "bench", load_rubric("trait"), load_rubric("coherence"),
                      SamplingConfig(args.max_new_tokens, 0.0))
    n_answers = len(cells) * len(questions)

    with tempfile.TemporaryDirectory(prefix="pvrs-bench-") as tmp:
        extra: dict[str, Any] = {}
        if name in CONFIGS:  # vLLM reads the config from a folder and makes up the weights
            from transformers import AutoConfig

            spec = dict(CONFIGS[name])
            AutoConfig.for_model(spec.pop("model_type"), **spec).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            extra["load_format"] = "dummy"
        config = VllmConfig(ModelSpec(tmp if name in CONFIGS else name, dtype=dtype),
                            gpu_memory_utilization=args.gpu_memory_utilization)
        started = time.perf_counter()
        with steerable(config, {DIRECTION: vector}, dtype, **extra) as llm:
            answer_requests(llm, tokenizer, [(None, questions[0], None)], SamplingConfig(1, 0.0))  # started, warm
            vllm_start = time.perf_counter() - started

            def hf(out: Path) -> list[Any]:
                return run_eval(model, tokenizer, vector, cells, setup, _NoJudge(), out, model_name=name)

            def vllm(out: Path) -> list[Any]:
                return run_eval(model, tokenizer, vector, cells, setup, _NoJudge(), out, model_name=name,
                                batch=lambda requests: answer_requests(llm, tokenizer, requests, setup.sampling))

            times: dict[str, list[float]] = {"hf": [], "vllm": []}
            generated: dict[str, list[int]] = {"hf": [], "vllm": []}
            answers: dict[str, list[str]] = {}
            for r in range(args.rounds):
                for engine, run in (("hf", hf), ("vllm", vllm)):
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    results = run(Path(tmp) / f"{engine}{r}")
                    times[engine].append(time.perf_counter() - t)
                    answers[engine] = [a for res in results for a in res.answers]
                    generated[engine].append(sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers[engine]))

    report: dict[str, Any] = {
        "model": name, "dtype": dtype, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "vllm_version": version(), "grid": f"{len(layers)} layers x {len(ALPHAS)} alphas + unsteered, {len(questions)} questions",
        "answers": n_answers, "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
        "start_s": {"hf": round(hf_start, 2), "vllm": round(vllm_start, 2)},
        "same_answers": sum(a == b for a, b in zip(answers["hf"], answers["vllm"], strict=True)),
    }
    for engine in times:
        report[engine] = {
            "seconds": spread(times[engine]),
            "answers_per_s": spread([n_answers / s for s in times[engine]]),
            "tokens_per_s": spread([g / s for g, s in zip(generated[engine], times[engine], strict=True)]),
        }
    report["hf_time_over_vllm_time"] = ratios(times["hf"], times["vllm"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
