"""`pvrs finetune`: LoRA SFT of chat rows, optionally with preventative steering or ablation
of persona vectors on the training forwards (pvrs.training)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvrs.cli.common import (
    add_model_and_store_args,
    bounded_int,
    check_writable,
    float_in,
    positive_int,
    seed_int,
    writing,
)
from pvrs.errors import InputError


@dataclass(frozen=True)
class SteerSpec:
    """`V@LAYERS:ALPHA` (prevent) or `V@LAYERS` (ablate), as typed."""

    flag: str
    text: str
    vector: str
    layers: str
    alpha: str | None


def parse_spec(text: str, flag: str) -> SteerSpec:
    vector, at, rest = text.rpartition("@")
    alpha = None
    if flag == "--prevent":
        rest, colon, alpha = rest.rpartition(":")
        if not colon:
            raise InputError(f"--prevent {text!r}: write VECTOR@LAYER:ALPHA, e.g. pirate_captain@15:0.2x")
    if not at or not vector or not rest:
        example = "VECTOR@LAYER:ALPHA" if flag == "--prevent" else "VECTOR@LAYER"
        raise InputError(f"{flag} {text!r}: write {example} (layers like 15 or 12-15)")
    return SteerSpec(flag, text, vector, rest, alpha)


def _alpha(spec: SteerSpec, model: Any, tokenizer: Any, vector: Any, layers: list[int]) -> float | dict[int, float]:
    """A number is alpha itself; `0.2x` is 0.2 times the layer's median residual norm."""
    from pvrs.cli.common import magnitude

    assert spec.alpha is not None
    relative = spec.alpha.endswith("x")
    try:
        value = magnitude(spec.alpha[:-1] if relative else spec.alpha)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"--prevent {spec.text!r}: ALPHA {exc}; give a number (alpha) or e.g. 0.2x (of the median norm)") from None
    if not relative:
        return value
    from pvrs.steering.interventions import suggested_alphas

    return suggested_alphas(model, tokenizer, vector, layers, fraction=value)


def _output_dir(args: argparse.Namespace) -> Path:
    from pvrs.analysis.tables import slug
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.paths import artifacts_dir

    if args.out:
        return Path(args.out)
    return artifacts_dir() / "finetune" / model_dir_name(canonical_model_name(args.model)) / slug(Path(args.data).stem)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pvrs.cli.steering_run import load_model, resolve_vector
    from pvrs.engines.hooks import decoder_layers
    from pvrs.engines.models import resolve_device
    from pvrs.steering.residuals import layer_vectors, resolve_layers
    from pvrs.steering.screen import read_conversations
    from pvrs.store.layerspec import parse_layers
    from pvrs.training import sft as ft
    from pvrs.training.models import require
    from pvrs.training.prevent import PreventativeSteering

    require("peft", "trl", "datasets", what="pvrs finetune")
    specs = [parse_spec(t, "--prevent") for t in args.prevent or []] + [parse_spec(t, "--ablate") for t in args.ablate or []]
    out = _output_dir(args)
    check_writable("--out", out, is_dir=True)
    ft.check_out(out, args.resume)
    conversations = read_conversations(args.data)
    ft.prompt_completion(conversations, args.data)  # rows without an answer: before the model loads
    model, tokenizer = load_model(args)
    blocks = range(len(decoder_layers(model)))
    steerings = []
    for spec in specs:
        vector = resolve_vector(spec.vector, args)
        layers = resolve_layers(model, parse_layers([spec.layers], blocks, spec.flag))
        layer_vectors(model, vector, layers, f"{spec.flag} {spec.text} vector")  # its shape, before training
        alpha = _alpha(spec, model, tokenizer, vector, layers) if spec.alpha is not None else 0.0
        steerings.append(PreventativeSteering(vector, layers, alpha, ablate=spec.alpha is None))
    config = ft.TrainConfig(
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=args.target_modules,
        learning_rate=args.lr, batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps or -1,
        save_steps=args.save_steps, seed=args.seed, use_cpu=resolve_device(args.device) == "cpu",
        run={"model": args.model, "data": str(Path(args.data).resolve()),
             "steering": [{"spec": s.text, "flag": s.flag, "layers": list(st.layers),
                           "alpha": st.alpha if isinstance(st.alpha, float) else {str(k): v for k, v in st.alpha.items()}}
                          for s, st in zip(specs, steerings, strict=True)]},
    )
    console = Console(stderr=True)
    console.print(f"fine-tuning {args.model} on {len(conversations)} rows into {out}"
                  + "".join(f"; {s.flag} {s.text}" for s in specs), soft_wrap=True)
    try:
        with writing(out):
            adapter = ft.finetune(model, tokenizer, conversations, out, config, steerings, resume=args.resume,
                                  source=args.data)
    except KeyboardInterrupt:
        console.print(f"pvrs finetune: interrupted; checkpoint saved in {out / ft.CHECKPOINTS}: add --resume to continue",
                      soft_wrap=True)
        return 130
    console.print(f"wrote {adapter}, {out / ft.SETTINGS}, {out / ft.LOSS_CSV}", soft_wrap=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="LoRA fine-tune on chat rows, optionally preventing a persona vector's shift (pip install 'pvrs[train]')",
        description="LoRA SFT with trl of JSONL/JSON/parquet rows with 'messages' ending in the assistant "
        "answer (the only labels). --prevent adds alpha * vector at the layers, --ablate removes the "
        "vector's component there, on training forwards only: the saved adapter has no trace of it. "
        "Writes adapter/, settings.json, loss.csv and checkpoints/ (Ctrl-C saves one; --resume continues).",
    )
    p.add_argument("data", metavar="DATA", help="rows with 'messages' ([{role, content}], the last the assistant's)")
    add_model_and_store_args(p)
    p.add_argument("--lora", action="store_true", required=True, help="train a LoRA adapter (the mode pvrs supports)")
    p.add_argument("--prevent", action="append", metavar="V@LAYER:ALPHA",
                   help="add ALPHA * V at LAYER(s) while training; ALPHA a number, or e.g. 0.2x: 0.2 times the "
                   "layer's median residual norm (0.1x-0.2x worked on SmolLM2; see the README). Repeatable")
    p.add_argument("--ablate", action="append", metavar="V@LAYER",
                   help="remove V's component at LAYER(s) while training. Repeatable")
    p.add_argument("--out", metavar="DIR", help="run folder (default $ARTIFACTS_DIR/finetune/<model>/<data>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank (default %(default)s)")
    p.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha (default %(default)s)")
    p.add_argument("--target-modules", default="all-linear", help="LoRA target modules (default %(default)s)")
    p.add_argument("--lr", type=float_in(0, 1, open_below=True), default=5e-4, help="learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="rows per step (default %(default)s)")
    p.add_argument("--epochs", type=float_in(0, 1e4, open_below=True), default=1.0, help="default %(default)s")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--save-steps", type=bounded_int(1), default=50, help="checkpoint every N steps (default %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="default %(default)s")
    p.set_defaults(handler=_cmd_finetune)
