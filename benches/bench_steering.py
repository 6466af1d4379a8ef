"""Cost of steering hooks during generation: greedy `generate` with no hooks (baseline),
with `steer` on one layer, with `steer` on every layer, with `positions="generated"`
(the position tracker's pre-hook), and with `cap` on every layer. Ratios are against the
baseline measured in the same run.

Run by hand, not by CI:

    python benches/bench_steering.py                      # built-in SmolLM2-135M on CPU
    python benches/bench_steering.py --device cuda --new-tokens 128
    python benches/bench_steering.py --model qwen2.5-7b --device cuda --dtype bfloat16  # random weights
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from bench_extract import CONFIGS, load_model
from pvrs.engines.hooks import decoder_layers
from pvrs.extraction.generate import DEFAULT_PROMPTS, as_chat, render
from pvrs.steering.interventions import cap, steer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help=f"built-in/HF model or one of {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokenizer", help="folder of saved tokenizer files (default: the built-in SmolLM2's)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model, tokenizer, device = load_model(args.model, args.device, args.dtype, args.tokenizer)
    text = render(tokenizer, as_chat(DEFAULT_PROMPTS[0]))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    n_layers = len(decoder_layers(model))
    all_layers = list(range(n_layers))
    vector = torch.randn(n_layers, model.config.hidden_size) * 0.01
    modes: dict[str, Callable[[], AbstractContextManager]] = {
        "baseline (no hooks)": nullcontext,
        "steer 1 layer": lambda: steer(model, vector, [n_layers // 2]),
        f"steer {n_layers} layers": lambda: steer(model, vector, all_layers),
        f"steer {n_layers} layers, generated only": lambda: steer(
            model, vector, all_layers, positions="generated"
        ),
        f"cap {n_layers} layers": lambda: cap(model, vector, all_layers, tau=1e9),
    }

    def run() -> None:
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()  # warm-up
    times: dict[str, float] = {}
    for name, make in modes.items():
        samples = []
        for _ in range(args.repeats):
            with make():
                start = time.perf_counter()
                run()
                sync()
                samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples)
    base = times["baseline (no hooks)"]
    print(
        f"{args.model} ({model.dtype}) on {device}, prompt {ids.shape[1]} tokens, {args.new_tokens} new tokens, "
        f"median of {args.repeats}"
    )
    for name, seconds in times.items():
        print(
            f"  {name:<40} {seconds * 1000:8.1f} ms  {args.new_tokens / seconds:7.1f} tok/s  "
            f"x{seconds / base:.3f}"
        )


if __name__ == "__main__":
    main()
