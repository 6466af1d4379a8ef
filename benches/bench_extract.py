"""End-to-end extraction throughput: pvrs vs a bare forward pass vs the reference approach.

Run by hand, not by CI. Each mode runs in its own subprocess so peak memory is per mode.

    python benches/bench_extract.py                                  # built-in SmolLM2-135M on CPU
    python benches/bench_extract.py --model qwen2.5-7b --device cuda # real-size config, random weights

Modes, all over the same samples (biography variant: long persona prompt, N questions):
  bare       forward of the whole model over pvrs's batches, no hooks (the ceiling)
  bare-body  the same without the LM head (`model.model`), the stricter ceiling
  pvrs       all eight strategies, all layers, batched, prefix reuse
  pvrs-noprefix  the same without prefix reuse (the persona prompt re-encoded per question)
  reference  one sample per pass, output_hidden_states=True, one strategy (answer_mean)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

# Public config.json values of real models; weights are random (throughput only).
CONFIGS = {
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "gemma-2-9b": dict(model_type="gemma2", vocab_size=256000, hidden_size=3584, intermediate_size=14336,
                       num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                       sliding_window=4096, query_pre_attn_scalar=256, max_position_embeddings=8192),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=8192, tie_word_embeddings=True),
}


def load(args: argparse.Namespace):
    import torch
    from pvrs.engines import models
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tokenizer = models.load("smollm2-135m", device="cpu")  # its tokenizer and chat template drive every model
    device = models.resolve_device(args.device)
    dtype = models.resolve_dtype(args.dtype, device)
    if args.model in CONFIGS:
        spec = dict(CONFIGS[args.model])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model, _ = models.load(args.model, dtype=args.dtype, device=device)
    return model.eval(), tokenizer, device


def samples(tokenizer, n_questions: int):
    from pvrs.extraction import inputs
    from pvrs.extraction.chat import prepare_inputs
    from pvrs.extraction.masks import ALL_STRATEGIES

    persona = next(p for p in inputs.load_personas() if p.id == "pirate_captain")
    qa = inputs.load_qa()
    rows = [r for r in qa if r.persona_id == "pirate_captain"]
    biography = " ".join([persona.biography] * 3)  # ~300 tokens, a long persona prompt
    data = [(f"s{i}", f"{rows[i % len(rows)].question} (take {i})", " ".join([rows[i % len(rows)].answer] * 2)) for i in range(n_questions)]
    return prepare_inputs(tokenizer, data, system_prompt=biography, strategies=ALL_STRATEGIES)


def run_mode(args: argparse.Namespace) -> dict:
    import torch
    from pvrs.engines.transformers import EngineConfig, plan_batches, sample_means
    from pvrs.extraction.masks import ALL_STRATEGIES, MaskStrategy

    model, tokenizer, device = load(args)
    prepared = samples(tokenizer, args.questions)
    ids = [p.input_ids for p in prepared]
    n_tokens = sum(len(i) for i in ids)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def once() -> None:
        if args.mode in ("pvrs", "pvrs-noprefix"):
            masks = [np.stack([p.token_masks[s] for s in ALL_STRATEGIES]) for p in prepared]
            config = EngineConfig(batch_tokens=args.batch_tokens, prefix_reuse=args.mode == "pvrs")
            sample_means(model, ids, masks, config)
        elif args.mode in ("bare", "bare-body"):
            forward = model if args.mode == "bare" else model.get_decoder()
            with torch.inference_mode():
                for batch in plan_batches([len(i) for i in ids], args.batch_tokens):
                    width = max(len(ids[i]) for i in batch)
                    x = torch.zeros((len(batch), width), dtype=torch.long, device=device)
                    attn = torch.zeros_like(x)
                    for row, i in enumerate(batch):
                        x[row, : len(ids[i])] = torch.as_tensor(ids[i])
                        attn[row, : len(ids[i])] = 1
                    forward(input_ids=x, attention_mask=attn, use_cache=False)
        else:
            with torch.inference_mode():
                for p in prepared:
                    hs = model(torch.as_tensor(p.input_ids, device=device)[None], output_hidden_states=True).hidden_states
                    mask = torch.as_tensor(p.token_masks[MaskStrategy.ANSWER_MEAN], device=device)
                    torch.stack([h[0, mask].float().mean(0) for h in hs[1:]]).cpu()

    once()  # warm-up (kernels, allocator)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.repeat):
        once()
    sync()
    seconds = (time.perf_counter() - start) / args.repeat
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"mode": args.mode, "tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds,
            "peak_gib": peak, "peak_kind": "cuda max allocated" if cuda else "process max RSS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help=f"built-in/HF model or one of {', '.join(CONFIGS)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["bare", "bare-body", "pvrs", "pvrs-noprefix", "reference"])
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
               "--questions", str(args.questions), "--batch-tokens", str(args.batch_tokens), "--repeat", str(args.repeat)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:>9}: {r['tokens']:,} tokens in {r['seconds']:.2f} s = {r['tokens_per_s']:,.0f} tok/s, peak {r['peak_gib']:.2f} GiB ({r['peak_kind']})")
    for fast, base in (("pvrs", "bare"), ("pvrs", "bare-body"), ("pvrs-noprefix", "bare-body")):
        if {fast, base} <= results.keys():
            ratio = results[fast]["tokens_per_s"] / results[base]["tokens_per_s"]
            print(f"{fast} / {base} = {ratio:.2f}x (target >= 0.90)")
    if {"reference", "pvrs"} <= results.keys():
        print(f"pvrs / reference method = {results['pvrs']['tokens_per_s'] / results['reference']['tokens_per_s']:.1f}x (target >= 10x; pvrs does 8 strategies, reference 1)")


if __name__ == "__main__":
    main()
