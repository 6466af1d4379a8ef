"""The `pvrs` command line: one module per command group (`extract`, `store`, `analyze`,
`steering`, `doctor`), each registering its sub-commands, over shared flags in `common`.
Each sub-command is a small `_cmd_*` function; user mistakes (`PvrsError`) print one line on
stderr and exit 2, failed writes (`OSError`: disk full, ...) one line and exit 1; nothing else
is caught."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from pvrs.cli import (
    analyze,
    attribute,
    doctor,
    evaluate,
    extract,
    finetune,
    judge,
    probe,
    screen,
    serve,
    shift,
    steering,
    store,
    trait,
)
from pvrs.cli.common import EXIT_USAGE
from pvrs.errors import GenerationError, PvrsError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {doctor.pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (doctor, extract, attribute, store, analyze, probe, steering, judge, evaluate, trait, screen, shift, finetune, serve):
        group.register(sub)
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
    except GenerationError as exc:  # a generator model failed at its task: no user mistake
        print(f"pvrs {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except PvrsError as exc:
        print(f"pvrs {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # A full disk, a file size limit (`ulimit -f`), a folder turned read-only mid-run: not a
        # usage mistake, so exit 1; whatever was written before stays.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pvrs {args.command}: error: cannot write {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pvrs {args.command}: interrupted; artifacts saved so far are intact", file=sys.stderr)
        return 130


def _one_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: TextIO | None = None, line: str | None = None,
) -> None:
    """A warning as the `pvrs` command prints it: one line, like its errors, without Python's
    source file, line number and code line."""
    print(f"pvrs: warning: {message}", file=sys.stderr if file is None else file)


def entry() -> int:
    """The `pvrs` executable (and `python -m pvrs`): `main` with one-line warnings. Calling
    `main` from Python leaves the caller's warning handling alone."""
    warnings.showwarning = _one_line
    return main()

