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


def _cmd_validate(args: argparse.Namespace) -> int:
    from pvrs.validation import validate

    report = validate(args.path, deep=args.deep)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for problem in report.problems:
            print(problem)
        print(report.summary())
    return 0 if report.ok else 1


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check an artifacts tree or variant folder (exit 0 clean, 1 with errors)",
        description="Check manifests, persona ids, tensor files and their headers; report every problem.",
    )
    p.add_argument("path", help="artifacts tree (e.g. artifacts/activations) or one variant folder")
    p.add_argument("--deep", action="store_true", help="also check sha256 and scan for NaN/Inf")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_validate)


def _cmd_import(args: argparse.Namespace) -> int:
    from pvrs.importers import import_pt
    from pvrs.models import canonical_model_name
    from pvrs.store import PersonaVectorStore

    store = PersonaVectorStore(
        canonical_model_name(args.model), root_dir=args.output, mask_strategy=args.mask_strategy
    )
    result = import_pt(
        args.files, store, args.variant, layout=args.layout, num_layers=args.num_layers
    )
    dropped = " (dropped the embedding row)" if result.source_layer_convention != "decoder_block_outputs" else ""
    print(
        f"imported {len(result.persona_ids)} vector(s) of ({result.num_layers}, {result.hidden_size})"
        f"{dropped} into {result.variant_dir}"
    )
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import persona vectors from other tools (.pt files) into the store",
        description="Import [L+1, d] (embedding row first) or [L, d] .pt tensors; persona id = file stem.",
    )
    p.add_argument("files", nargs="+", help=".pt files or folders of them")
    p.add_argument("--model", required=True, help="model the vectors come from (Hub id or built-in name)")
    p.add_argument("--variant", default="templated", help="prompt variant to file them under (default: templated)")
    p.add_argument("--mask-strategy", default="answer_mean", help="mask strategy folder (default: answer_mean)")
    p.add_argument("--output", default=None, help="store root (default: $ARTIFACTS_DIR/activations)")
    p.add_argument(
        "--layout",
        choices=("auto", "with-embeddings", "blocks"),
        default="auto",
        help="rows of the files: auto (from the model's layer count), with-embeddings ([L+1, d]) or blocks ([L, d])",
    )
    p.add_argument("--num-layers", type=int, default=None, help="the model's decoder layers (auto layout without a config)")
    p.set_defaults(handler=_cmd_import)


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_doctor, _add_validate, _add_import):
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
