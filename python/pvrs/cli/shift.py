"""`pvrs shift`: how far a fine-tune moved the model along persona vectors, per layer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pvrs.cli.common import (
    add_model_and_store_args,
    check_writable,
    magnitude,
    positive_int,
    writing,
)


def _name(tuned: str) -> str:
    return Path(tuned).name or tuned


def _names(tuned: list[str]) -> list[str]:
    """Each model's folder name, with as many parent folders as tell them apart (pvrs finetune
    saves every run's adapter as RUN/adapter)."""
    for depth in range(1, max(len(Path(t).parts) for t in tuned) + 1):
        names = [Path(*Path(t).parts[-depth:]).as_posix() if Path(t).parts else t for t in tuned]
        if len(set(names)) == len(names):
            return names
    return tuned


def _output_dir(args: argparse.Namespace) -> Path:
    from pvrs.analysis.tables import slug
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.paths import artifacts_dir

    if args.output_dir:
        return Path(args.output_dir)
    return artifacts_dir() / "shift" / model_dir_name(canonical_model_name(args.model)) / slug(_name(args.tuned[0]))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from pvrs.store import atomic_write_bytes

    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pylist(rows), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _cmd_shift(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pvrs.cli.steering_run import load_model, resolve_vector
    from pvrs.engines.hooks import decoder_layers
    from pvrs.errors import InvalidArgumentError
    from pvrs.store.layerspec import parse_layers
    from pvrs.training import shift as sh
    from pvrs.training.models import load_tuned

    out = _output_dir(args)
    check_writable("--output-dir", out, is_dir=True)
    if args.scores is not None:
        sh.check_scores(len(args.tuned), args.scores)
    questions = sh.read_questions(args.questions) if args.questions else sh.default_questions()
    vectors = {spec: resolve_vector(spec, args) for spec in args.vector}
    console = Console(stderr=True)
    base, tokenizer = load_model(args)
    blocks = range(len(decoder_layers(base)))
    layers = parse_layers(args.layers, blocks, "--layers") if args.layers else list(blocks)
    units = {spec: sh.layer_units(base, v, layers, spec) for spec, v in vectors.items()}
    with console.status("base model: mean activations"):
        base_means = sh.mean_activations(base, tokenizer, questions, layers, max_new_tokens=args.max_new_tokens)
    shifts: dict[str, sh.Shift] = {}
    for tuned, name in zip(args.tuned, _names(args.tuned), strict=True):
        with console.status(f"loading {tuned}"):
            model = load_tuned(tuned, base, dtype=args.dtype, device=args.device)
        if len(decoder_layers(model)) != len(blocks):
            raise InvalidArgumentError(
                f"--tuned {tuned} has {len(decoder_layers(model))} blocks, --base {len(blocks)}; "
                "compare a fine-tune with its own base"
            )
        with console.status(f"{tuned}: mean activations"):
            means = sh.mean_activations(model, tokenizer, questions, layers, max_new_tokens=args.max_new_tokens)
        shifts[name] = sh.project(base_means, means, units)
        del model
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        written = [_write_csv(out / "shift.csv", [r for name, s in shifts.items() for r in sh.rows(s, name)])]
        if args.scores is not None:
            written.append(_write_csv(out / "correlation.csv", sh.correlations(list(shifts.values()), args.scores)))
        written += _plots(shifts, list(vectors), out, args)
    for spec in vectors:
        table = Table(title=f"shift along {spec} (projection on the unit vector; cosine)")
        table.add_column("layer", justify="right")
        for name in shifts:
            for measure in sh.MEASURES:
                table.add_column(f"{name} {measure}", justify="right")
        for j, layer in enumerate(layers):
            cells = [f"{s.projection[spec][m][j]:+.4f} ({s.cosine[spec][m][j]:+.2f})" for s in shifts.values() for m in sh.MEASURES]
            table.add_row(str(layer), *cells)
        Console().print(table)
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _plots(shifts: dict[str, Any], specs: list[str], out: Path, args: argparse.Namespace) -> list[Path]:
    """One HTML page, a section per vector; skipped with a note without plotly."""
    import importlib.util
    import sys

    if importlib.util.find_spec("plotly") is None:
        print("pvrs shift: plotly is not installed; no plot (pip install 'pvrs[plots]')", file=sys.stderr)
        return []
    from pvrs.analysis.export import Section, write_html
    from pvrs.analysis.tables import slug
    from pvrs.training.shift import figure

    sections = [
        Section(slug(spec), f"shift along {spec}", "Tuned minus base mean activation, projected on the unit "
                "vector, per layer: at the last prompt token and averaged over answer tokens.", figure(shifts, spec))
        for spec in specs
    ]
    facts = [("base", args.model), ("tuned", ", ".join(args.tuned)), ("questions", args.questions or "built-in prompts")]
    return [write_html(sections, out / "shift.html", "activation shift", facts, [("shift.csv", "shift.csv")])]


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.training.shift import DEFAULT_MAX_NEW_TOKENS

    p = sub.add_parser(
        "shift",
        help="how far fine-tuned models moved along persona vectors (tuned minus base activations)",
        description="Mean activation of each tuned model minus the base model's on the same prompts, "
        "per layer, at the last prompt token and averaged over answer tokens (the answers in "
        "--questions, else each model's own greedy answer), projected on each unit vector, with "
        "the cosine. Writes shift.csv and shift.html (a plot per vector over layers). A --tuned "
        "LoRA adapter folder is applied to the base with peft (pip install 'pvrs[train]').",
    )
    add_model_and_store_args(p)
    p.add_argument("--base", dest="model", default=argparse.SUPPRESS, metavar="MODEL",
                   help="the base model (same as --model)")
    p.add_argument("--tuned", nargs="+", required=True, metavar="MODEL|ADAPTER_DIR",
                   help="fine-tuned models: model folders or ids, or LoRA adapter folders of the base")
    p.add_argument("--vector", nargs="+", required=True,
                   help="directions: stored persona ids (minus the baseline), 'assistant-axis', 'biography:ID', or vector files")
    p.add_argument("--questions", metavar="FILE",
                   help="JSON/JSONL/parquet rows with 'question' and optional 'answer' (default: pvrs's neutral prompts)")
    p.add_argument("--layers", nargs="+", help="block indices or ranges (default: every block)")
    p.add_argument("--scores", nargs="+", type=magnitude, metavar="SCORE",
                   help="the trait score of each --tuned model (e.g. from pvrs trait): adds correlation.csv, "
                   "Pearson's r of projection and score across models")
    p.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="greedy answer length when --questions has no answers (default %(default)s)")
    p.add_argument("--output-dir", metavar="DIR", help="default $ARTIFACTS_DIR/shift/<base>/<first tuned>")
    p.set_defaults(handler=_cmd_shift)
