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


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_doctor,):
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
