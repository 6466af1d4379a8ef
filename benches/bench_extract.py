"""End-to-end extraction throughput: pvrs vs a bare forward pass vs the reference approach.

Run by hand, not by CI. Each mode runs in its own subprocess so peak memory is per mode;
`--rounds R` runs every mode once per round, interleaved, and reports min/median/max
(ratios per round). Each pvrs mode also reports the result bytes that left the device per
batch and, on CUDA, the share of CUDA time spent in device-to-host copies (torch.profiler).

    python benches/bench_extract.py                                  # built-in SmolLM2-135M on CPU
    python benches/bench_extract.py --model qwen2.5-7b --device cuda # real-size config, random weights
    benches/gpu_suite.sh                                             # every GPU figure, one results file

Modes, all over the same samples (biography variant: long persona prompt, N questions):
  bare       forward of the whole model over pvrs's batches, no hooks (the ceiling)
  bare-body  the same without the LM head (`model.model`), the stricter ceiling
  pvrs       all eight strategies, all layers, batched, prefix reuse
  pvrs-noprefix  the same without prefix reuse (the persona prompt re-encoded per question)
  pvrs-samples   pvrs keeping per-sample means too (`--save-samples`): B x S x L x H per batch
                 leave the device, as every run did before the mean moved onto it (issue 14)
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
from _timing import ratios, spread

# Public config.json values of real models; weights are random (throughput only).
CONFIGS = {
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "gemma-2-9b": dict(model_type="gemma2", vocab_size=256000, hidden_size=3584, intermediate_size=14336,
                       num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                       sliding_window=4096, query_pre_attn_scalar=256, max_position_embeddings=8192),
    # CPU dry runs of the GPU suite (`benches/gpu_suite.sh --dry-run`): the same code in seconds.
    "tiny": dict(model_type="llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=8192, tie_word_embeddings=True),
}


def load_model(name: str, device: str, dtype: str, tokenizer_dir: str | None = None):
    """`(model, tokenizer, device)`: a real-size config with random weights (`CONFIGS`) or a
    loadable model; the tokenizer (and chat template) is the built-in SmolLM2's, or the one
    saved in `tokenizer_dir` (the GPU machine has the tokenizer files but not the GGUF)."""
    import torch
    from pvrs.engines import models
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        _, tokenizer = models.load("smollm2-135m", device="cpu")  # its tokenizer and chat template drive every model
    device = models.resolve_device(device)
    torch_dtype = models.resolve_dtype(dtype, device)
    if name in CONFIGS:
        spec = dict(CONFIGS[name])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    else:
        model, _ = models.load(name, dtype=dtype, device=device)
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

    model, tokenizer, device = load_model(args.model, args.device, args.dtype, args.tokenizer)
    prepared = samples(tokenizer, args.questions)
    ids = [p.input_ids for p in prepared]
    n_tokens = sum(len(i) for i in ids)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    pvrs_mode = args.mode.startswith("pvrs")
    host_bytes = 0

    def once() -> None:
        nonlocal host_bytes
        if pvrs_mode:
            masks = [np.stack([p.token_masks[s] for s in ALL_STRATEGIES]) for p in prepared]
            config = EngineConfig(batch_tokens=args.batch_tokens, prefix_reuse=args.mode != "pvrs-noprefix")
            host_bytes = sample_means(model, ids, masks, config, per_sample=args.mode == "pvrs-samples").host_bytes
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
    out = {"mode": args.mode, "tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds,
           "peak_gib": peak, "peak_kind": "cuda max allocated" if cuda else "process max RSS"}
    if pvrs_mode:  # the same plan the engine follows (no out-of-memory here)
        out.update(host_bytes=host_bytes, batches=len(plan_batches([len(i) for i in ids], args.batch_tokens)))
    if cuda:
        out["dtoh_share"] = dtoh_share(once)
    return out


def dtoh_share(once) -> float:
    """The share of CUDA time (kernels and copies) spent in device-to-host copies, one pass."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        once()
        torch.cuda.synchronize()
    times = {e.key: e.self_device_time_total for e in prof.key_averages()}
    total = sum(times.values())
    return sum(t for key, t in times.items() if "DtoH" in key) / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help=f"built-in/HF model or one of {', '.join(CONFIGS)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokenizer", help="folder of saved tokenizer files (default: the built-in SmolLM2's)")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per mode run (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of every mode, interleaved; min/median/max over them")
    ap.add_argument("--modes", nargs="+", default=["bare", "bare-body", "pvrs", "pvrs-noprefix", "pvrs-samples", "reference"])
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for _ in range(args.rounds):
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                   "--questions", str(args.questions), "--batch-tokens", str(args.batch_tokens), "--repeat", str(args.repeat)]
            cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    report(runs)


def report(runs: dict[str, list[dict]]) -> None:
    """Per mode: tok/s, ratio to the bare decoder forward (per round), bytes to host, D2H share."""
    rate = {mode: [r["tokens_per_s"] for r in rs] for mode, rs in runs.items()}
    for mode, rs in runs.items():
        first = rs[0]
        tok = spread(rate[mode])
        line = (f"{mode:>13}: {first['tokens']:,} tokens, tok/s min/median/max {tok['min']:,.0f} / {tok['median']:,.0f} / "
                f"{tok['max']:,.0f}, peak {max(r['peak_gib'] for r in rs):.2f} GiB ({first['peak_kind']})")
        if "bare-body" in rate and mode != "bare-body":
            x = ratios(rate[mode], rate["bare-body"])
            line += f"; / bare decoder {x['min']:.2f} / {x['median']:.2f} / {x['max']:.2f}x"
        print(line)
        if "host_bytes" in first:
            print(f"{'':>15}to host: {first['host_bytes']:,} bytes in {first['batches']} batches "
                  f"({first['host_bytes'] / first['batches']:,.0f} per batch)")
        if "dtoh_share" in first:
            print(f"{'':>15}device-to-host copies: {100 * spread([r['dtoh_share'] for r in rs])['median']:.2f} % of CUDA time (median)")
    if {"reference", "pvrs"} <= rate.keys():
        x = ratios(rate["pvrs"], rate["reference"])
        print(f"pvrs / reference method = {x['median']:.1f}x median (pvrs does 8 strategies, reference 1)")

if __name__ == "__main__":
    main()
