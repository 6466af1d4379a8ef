"""`pvrs screen` throughput: conversations/s of the batched engine against a loop of single
forward passes (each conversation alone, `output_hidden_states=True`, the projection taken
from the returned hidden states), on the same conversations and layers.

Run by hand, not by CI. Both contenders render and tokenize every conversation themselves
(`token_mask`, the same code), so the difference is the forward: token-budget batches that
stop after the last chosen layer against one full pass per conversation. Rounds are paired
(interleaved) and reported as min/median/max.

    python benches/bench_screen.py                      # built-in SmolLM2-135M on CPU, 48 conversations
    python benches/bench_screen.py --n 200 --rounds 5 --layer-sets "15" "0-29"
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from _timing import paired, ratios, spread


def conversations(n: int) -> list:
    """Built-in QA pairs as chats of one to three exchanges, so lengths vary."""
    from pvrs.extraction import inputs
    from pvrs.steering.screen import Conversation

    qa = inputs.load_qa()
    out = []
    for i in range(n):
        messages = []
        for k in range(1 + i % 3):
            pair = qa[(i + 7 * k) % len(qa)]
            messages += [{"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}]
        out.append(Conversation(i, f"c{i}", messages))
    return out


def single_passes(model, tokenizer, data, direction: np.ndarray, layers: list[int]) -> np.ndarray:
    """The loop a user would write: one conversation per forward, all hidden states returned."""
    from pvrs.steering.screen import token_mask

    units = torch.as_tensor(direction[layers] / np.linalg.norm(direction[layers], axis=1, keepdims=True))
    out = np.zeros((len(data), len(layers)))
    with torch.inference_mode():
        for n, conversation in enumerate(data):
            ids, mask = token_mask(tokenizer, conversation)
            hidden = model(input_ids=torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states
            picked = torch.as_tensor(mask)
            # hidden_states[i + 1] is block i (the last one after the final norm: fine for timing)
            out[n] = [float((hidden[i + 1][0][picked] @ units[j]).mean()) for j, i in enumerate(layers)]
    return out


def main() -> None:
    from pvrs.engines import models
    from pvrs.store.layerspec import parse_layers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=48, help="conversations")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--layer-sets", nargs="+", default=["15", "0-29"], help="each a layer spec, timed separately")
    args = parser.parse_args()

    model, tokenizer = models.load(args.model, device="cpu")
    from pvrs.engines.hooks import decoder_layers
    from pvrs.steering.screen import screen

    n_layers = len(decoder_layers(model))
    direction = np.random.default_rng(0).standard_normal((n_layers, model.config.hidden_size)).astype(np.float32)
    data = conversations(args.n)
    results = {"model": args.model, "n": args.n, "rounds": args.rounds, "threads": torch.get_num_threads(), "sets": {}}
    for spec in args.layer_sets:
        layers = parse_layers([spec], range(n_layers))
        check = screen(model, tokenizer, data, direction, layers, batch_tokens=args.batch_tokens).projections
        # Same numbers both ways (the loop's last block is after the final norm, so compare the others).
        inner = [j for j, i in enumerate(layers) if i != n_layers - 1]
        reference = single_passes(model, tokenizer, data[:4], direction, layers)
        np.testing.assert_allclose(check[:4, inner], reference[:, inner], atol=1e-3)
        times = paired({
            "loop": lambda layers=layers: single_passes(model, tokenizer, data, direction, layers),
            "pvrs": lambda layers=layers: screen(model, tokenizer, data, direction, layers, batch_tokens=args.batch_tokens),
        }, args.rounds)  # fmt: skip
        results["sets"][spec] = {
            "conversations_per_s": {name: spread([args.n / t for t in ts]) for name, ts in times.items()},
            "speedup": ratios(times["loop"], times["pvrs"]),
        }
        print(json.dumps({spec: results["sets"][spec]}), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
