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


def _cmd_push(args: argparse.Namespace) -> int:
    from pvrs import hub
    from pvrs.errors import InputError

    if args.dry_run and args.out is None:
        raise InputError("--dry-run writes the dataset folder only: pass --out DIR")
    if not args.dry_run and args.repo is None:
        raise InputError("--repo ORG/NAME is required (or use --dry-run --out DIR)")
    result = hub.push(
        args.model,
        args.repo,
        mask_strategies=args.mask_strategy,
        root_dir=args.root,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        out_dir=args.out,
        overwrite=True,
        commit_message=args.message,
        row_group_bytes=int(args.row_group_mb * (1 << 20)),
        file_bytes=int(args.file_mb * (1 << 20)),
    )
    pkg = result.package
    for s in pkg.splits:
        print(f"{s.config} / {s.split}: {s.num_rows} personas x ({s.num_layers}, {s.hidden_size}), {len(s.files)} file(s), {s.written_bytes / 1e6:.1f} MB")
    if result.commit_url is None:
        print(f"wrote {pkg.out_dir} (dry run, nothing uploaded)")
    else:
        print(f"pushed to https://huggingface.co/datasets/{result.repo_id}: {result.commit_url}")
        if result.deleted:
            print(f"removed {len(result.deleted)} stale file(s)")
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="publish persona vectors as a Hugging Face dataset (parquet, one commit)",
        description="Package the local persona vectors of one or more models into the Hub "
        "dataset layout (one config per model and mask strategy, one split per variant) "
        "and upload it in one commit. The token comes from `hf auth login` or HF_TOKEN.",
    )
    p.add_argument("--model", action="append", required=True, metavar="M", help="model id or folder name in the store (repeatable)")
    p.add_argument("--mask-strategy", nargs="+", metavar="S", help="mask strategies to publish, or 'all' (default: every one present)")
    p.add_argument("--repo", metavar="ORG/NAME", help="dataset repo id (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)")
    p.add_argument("--dry-run", action="store_true", help="only write the dataset folder to --out")
    p.add_argument("--out", metavar="DIR", help="where to write the dataset folder (required with --dry-run; replaced if it holds an earlier package)")
    p.add_argument("--root", metavar="DIR", help="activation store root (default: $ARTIFACTS_DIR/activations)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--row-group-mb", type=float, default=64.0, metavar="MB", help="uncompressed row group size, the memory bound (default: 64)")
    p.add_argument("--file-mb", type=float, default=500.0, metavar="MB", help="uncompressed size of one parquet file (default: 500)")
    p.set_defaults(handler=_cmd_push)


def build_parser() -> argparse.ArgumentParser:
    from pvrs.doctor import pvrs_version

    parser = argparse.ArgumentParser(
        prog="pvrs",
        description="Persona vectors: extract, analyse, steer and publish them.",
    )
    parser.add_argument("--version", action="version", version=f"pvrs {pvrs_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_doctor, _add_push):
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
