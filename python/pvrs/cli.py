"""The `pvrs` command line. Each sub-command is a small `_cmd_*` function; user mistakes
(`PvrsError`) print one line on stderr and exit 2, nothing else is caught."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from pvrs.errors import PvrsError

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pvrs import doctor

    info = doctor.report()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        doctor.print_report(info)
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, native build, devices, built-in model, paths")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_doctor)


def _cmd_preview(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from pvrs import models
    from pvrs.chat import analyze_template, prepare_inputs, print_preview
    from pvrs.errors import InputError
    from pvrs.masks import parse_strategies

    explicit = args.question is not None or args.answer is not None or args.system is not None
    if explicit and (args.question is None or args.answer is None):
        raise InputError("--system/--question/--answer: pass both --question and --answer (--system is optional)")
    if explicit and args.persona_id:
        raise InputError("pass either --persona-id or --system/--question/--answer, not both")
    tokenizer = models.load_tokenizer(args.model, revision=args.revision)
    if explicit:
        label, system = "custom", args.system
        samples = [("custom", args.question, args.answer)]
    else:
        from pvrs.inputs import load_personas, load_qa, qa_for_persona, select_personas

        personas = load_personas(args.personas)
        [persona] = select_personas(personas, [args.persona_id]) if args.persona_id else personas[:1]
        label, system = f"{persona.id} ({args.variant})", persona.system_prompt(args.variant)
        rows = qa_for_persona(load_qa(args.qa), persona, n_train=args.n)
        if not rows:
            raise InputError(f"persona {persona.id!r} has no QA rows in the train split; pass --qa or --question/--answer")
        samples = [(r.sample_id, r.question, r.answer) for r in rows]
    strategies = parse_strategies(args.mask_strategy)
    console = Console()
    layout = analyze_template(tokenizer, has_system=system is not None)
    if system is None and layout.default_system is None and args.mask_strategy == "all":
        # `all` means every strategy the baseline can serve under this template.
        strategies = [s for s in strategies if not s.value.startswith("persona_")]
        console.print("[dim]no system prompt and no template default: persona_* strategies skipped[/]")
    console.print(
        f"[bold]{escape(args.model)}[/] · persona [bold]{escape(label)}[/] · system prompt: "
        + {"native": "system turn", "merged": "merged into the first user turn", "none": "none"}[layout.system_mode]
        + (" (template default shown as the persona span)" if layout.default_system else "")
    )
    for prepared in prepare_inputs(tokenizer, samples, system_prompt=system, strategies=strategies):
        print_preview(console, tokenizer, prepared, strategies)
    return 0


def _add_preview(sub: argparse._SubParsersAction) -> None:
    from pvrs.inputs import VARIANTS
    from pvrs.models import DEFAULT_MODEL

    p = sub.add_parser(
        "preview",
        help="show the rendered prompt with each mask strategy's tokens highlighted",
        description="Render persona conversations with the model's chat template and highlight "
        "the tokens each mask strategy averages. Loads only the tokenizer.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id, local folder or built-in (default {DEFAULT_MODEL})")
    p.add_argument("--revision", default=None, help="model revision on the Hub")
    p.add_argument("--persona-id", default=None, help="persona to preview (default: the first persona)")
    p.add_argument("--variant", choices=VARIANTS, default="templated", help="prompt variant (default templated)")
    p.add_argument("--personas", default=None, help="persona file (default: the built-in demo set)")
    p.add_argument("--qa", default=None, help="QA file (default: the built-in demo set)")
    p.add_argument("-n", type=int, default=1, help="number of QA pairs to show (default 1)")
    p.add_argument("--mask-strategy", default="all", help="a strategy name or 'all' (default all)")
    p.add_argument("--system", default=None, help="custom system prompt (omit for none)")
    p.add_argument("--question", default=None, help="custom question (with --answer)")
    p.add_argument("--answer", default=None, help="custom answer (with --question)")
    p.set_defaults(handler=_cmd_preview)


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_doctor, _add_preview):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except PvrsError as exc:
        print(f"pvrs {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pvrs {args.command}: interrupted; artifacts saved so far are intact", file=sys.stderr)
        return 130
