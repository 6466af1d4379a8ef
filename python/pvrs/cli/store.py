"""The store's commands: `pvrs validate`, `pvrs import` and `pvrs push`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pvrs.cli.common import megabytes, positive_int, writing
from pvrs.errors import InputError
from pvrs.hub.vector_sources import local_store_root


def _cmd_push(args: argparse.Namespace) -> int:
    from pvrs import hub
    from pvrs.engines.models import canonical_model_name

    if args.dry_run and args.out is None:
        raise InputError("--dry-run writes the dataset folder only: pass --out DIR")
    if not args.dry_run and args.repo is None:
        raise InputError("--repo ORG/NAME is required (or use --dry-run --out DIR)")
    result = hub.push(
        [canonical_model_name(m) for m in args.model],
        args.repo,
        mask_strategies=args.mask_strategy,
        root_dir=local_store_root(args.source),
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
    p.add_argument("--source", metavar="DIR", help="local store to publish (default: $ARTIFACTS_DIR/activations)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--row-group-mb", type=megabytes, default=64.0, metavar="MB", help="uncompressed row group size, the memory bound (default: 64)")
    p.add_argument("--file-mb", type=megabytes, default=500.0, metavar="MB", help="uncompressed size of one parquet file (default: 500)")
    p.set_defaults(handler=_cmd_push)


def _cmd_validate(args: argparse.Namespace) -> int:
    from pvrs.paths import activations_dir
    from pvrs.store.validation import validate

    path = Path(args.path) if args.path else activations_dir()
    if not path.exists():
        raise InputError(
            f"{path}: no store there; pass a store, an artifacts tree or a variant folder "
            f"(`pvrs extract` writes to {activations_dir()})"
        )
    report = validate(path, deep=args.deep)
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
    p.add_argument(
        "path",
        nargs="?",
        help="store root, artifacts tree or one variant folder (default: $ARTIFACTS_DIR/activations)",
    )
    p.add_argument("--deep", action="store_true", help="also check sha256 and scan for NaN/Inf")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_validate)


def _cmd_import(args: argparse.Namespace) -> int:
    from pvrs.engines.models import canonical_model_name
    from pvrs.store import PersonaVectorStore
    from pvrs.store.importers import CONTROL_VECTOR, WITH_EMBEDDINGS, import_vectors

    store = PersonaVectorStore(
        canonical_model_name(args.model), root_dir=args.output_dir, mask_strategy=args.mask_strategy
    )
    with writing(store.variant_dir(args.variant)):  # a full disk's write() names no file
        result = import_vectors(
            args.files, store, args.variant, layout=args.layout, num_layers=args.num_layers,
            force=args.force,
        )
    notes = {
        WITH_EMBEDDINGS: " (output_hidden_states rows: dropped row 0 (embeddings) and the final norm's row, "
        "which is no block's output; row i is block i, the last block is not in the file)",
        CONTROL_VECTOR: " (control vectors: blocks without a direction are zero rows)",
    }
    print(
        f"imported {len(result.persona_ids)} vector(s) of ({result.num_layers}, {result.hidden_size})"
        f"{notes.get(result.source_layer_convention, '')} into {result.variant_dir}"
    )
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import vectors from other tools (.pt tensors, llama.cpp .gguf control vectors) into the store",
        description="Import [L+1, d] (output_hidden_states: embeddings, blocks, final norm) or [L, d] .pt tensors, or llama.cpp "
        "control vectors (.gguf, direction.k = block k); persona id = file stem.",
    )
    p.add_argument("files", nargs="+", help=".pt/.gguf files or folders of them")
    p.add_argument("--model", required=True, help="model the vectors come from (Hub id or built-in name)")
    p.add_argument("--variant", default="templated", help="prompt variant to file them under (default: templated)")
    p.add_argument("--mask-strategy", default="answer_mean", help="mask strategy folder (default: answer_mean)")
    p.add_argument("--output-dir", metavar="DIR", help="store root (default: $ARTIFACTS_DIR/activations)")
    p.add_argument(
        "--layout",
        choices=("auto", "with-embeddings", "blocks"),
        default="auto",
        help="rows of the files: auto (from the model's layer count), with-embeddings ([L+1, d] of output_hidden_states: "
        "blocks 0..L-2 are kept) or blocks ([L, d]) (default auto)",
    )
    p.add_argument("--num-layers", type=positive_int, default=None, help="the model's decoder layers (when its config cannot be read)")
    p.add_argument("--force", action="store_true", help="replace personas the variant already holds (default: refuse)")
    p.set_defaults(handler=_cmd_import)


def register(sub: argparse._SubParsersAction) -> None:
    _add_validate(sub)
    _add_import(sub)
    _add_push(sub)
