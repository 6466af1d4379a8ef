"""`pvrs screen`: every conversation of a dataset projected on a direction, per layer, with a
table and a histogram, to flag training data that pushes a model toward a trait."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pvrs.cli.common import (
    add_engine_args,
    add_model_and_store_args,
    check_writable,
    positive_int,
    vllm_config,
    writing,
)
from pvrs.defaults import DEFAULT_BATCH_TOKENS
from pvrs.errors import InputError


def _output_dir(args: argparse.Namespace) -> Path:
    from pvrs.analysis.tables import slug
    from pvrs.engines.models import canonical_model_name, model_dir_name
    from pvrs.paths import artifacts_dir

    if args.output_dir:
        return Path(args.output_dir)
    model = model_dir_name(canonical_model_name(args.model))
    return artifacts_dir() / "screen" / model / slug(args.vector) / slug(Path(args.data).stem)


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:.1f} conversations/s")

    return Rate()


def _plots_available(png: bool, console: Any) -> bool:
    """Whether the histogram can be drawn: without plotly it is skipped with a note, but a
    PNG asked for and impossible is an error before the model loads."""
    from pvrs.errors import RenderError

    try:
        import plotly  # noqa: F401
    except ImportError:
        if png:
            raise RenderError("--png needs plotly and kaleido: pip install 'pvrs[plots]', or drop --png") from None
        console.print("[dim]plotly is not installed; skipping the histogram (pip install 'pvrs[plots]')[/dim]")
        return False
    from pvrs.analysis.export import png_browser

    if png and png_browser() is None:
        raise RenderError("--png needs Chrome or Chromium for kaleido: `apt-get install chromium` (or "
                          "`plotly_get_chrome`), or drop --png for the HTML histogram only")
    return True


def _cmd_screen(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from pvrs.cli.steering_run import load_model, resolve_vector, vector_layers
    from pvrs.steering.screen import (
        histogram,
        projection_difference,
        prompt_of,
        read_conversations,
        screen,
        vllm_answers,
        write_tables,
    )

    # Everything a user can get wrong is checked before the model loads.
    if args.engine == "vllm" and not args.projection_difference:
        raise InputError("--engine vllm generates the model's own answers for --projection-difference; add it, "
                         "or drop --engine vllm")
    vllm = vllm_config(args)
    out = _output_dir(args)
    check_writable("--output-dir", out, is_dir=True)
    conversations = read_conversations(args.data, args.split)
    if args.projection_difference:
        for c in conversations:
            prompt_of(c)
    vector = resolve_vector(args.vector, args)
    layers = vector_layers(args.layer, vector)
    if vector.ndim == 1:  # one direction for every layer: the model's config bounds them
        from pvrs.store.importers import model_num_layers
        from pvrs.store.layerspec import parse_layers

        blocks = model_num_layers(args.model)
        if blocks is not None:
            layers = parse_layers(args.layer, range(blocks), "--layer")
    console = Console(stderr=True)
    plots = _plots_available(args.png, console)
    answers = None
    if vllm is not None:  # before the model loads: vLLM takes most of a GPU's memory while it runs
        import torch

        from pvrs.engines.models import skeleton

        meta, meta_tokenizer = skeleton(vllm.model, on_gpu=torch.cuda.is_available())
        with console.status("the model's own answers to the same prompts, on vLLM"):
            answers = vllm_answers(vllm, meta, meta_tokenizer, conversations, args.max_new_tokens)
    model, tokenizer = load_model(args)
    with Progress(TextColumn("screening"), BarColumn(), MofNCompleteColumn(), _rate_column(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("screening", total=len(conversations))
        started = time.perf_counter()
        result = screen(model, tokenizer, conversations, vector, layers, tokens=args.tokens,
                        batch_tokens=args.batch_tokens, on_batch=lambda n, _tokens: progress.advance(task, n))
        seconds = time.perf_counter() - started
    difference = None
    if args.projection_difference:
        doing = "the model's own answers to the same prompts" if answers is None else "projecting vLLM's answers"
        with console.status(doing):
            difference = projection_difference(model, tokenizer, result, vector, tokens=args.tokens,
                                               max_new_tokens=args.max_new_tokens, batch_tokens=args.batch_tokens,
                                               answers=answers)
    title = f"projection of {Path(args.data).name} on {args.vector} ({args.tokens} tokens)"
    with writing(out):
        written = write_tables(result, out, args.vector, difference)
        if plots:
            from pvrs.analysis.export import Section, write_html, write_pngs

            sections = [Section("histogram", title, "Each conversation's mean projection on the unit direction, per layer; "
                                "the far right tail moves a model most toward the direction.", histogram(result, title))]
            if difference is not None:
                sections.append(Section("difference", "projection difference", "Each conversation's projection minus "
                                        "that of the model's own answer to the same prompt, per layer.",
                                        histogram(result, "projection difference", difference.difference,
                                                  "data minus own answer, projection on the unit direction")))
            facts = [("data", str(args.data)), ("vector", args.vector), ("model", args.model), ("tokens", args.tokens),
                     ("conversations", str(len(conversations))), ("layers", ", ".join(map(str, result.layers)))]
            links = [("projections.csv", "projections.csv"), ("dataset.csv", "dataset.csv")]
            written.append(write_html(sections, out / "histogram.html", title, facts, links))
            if args.png:
                written += write_pngs(sections, out)
    last = result.layers[-1]
    ranked = result.projections if difference is None else difference.difference
    top = ranked[:, -1].argsort()[::-1][: args.top]
    shown = Table(title=f"highest {'projections' if difference is None else 'projection differences'} at layer {last}")
    extra = () if difference is None else ("own answer", "difference")
    for name in ("row", "id", "tokens", "projection", *extra):
        shown.add_column(name, justify="left" if name == "id" else "right")
    for n in top:
        c = result.conversations[n]
        cells = [] if difference is None else [f"{difference.own[n, -1]:+.4f}", f"{difference.difference[n, -1]:+.4f}"]
        shown.add_row(str(c.index), c.id, str(result.n_tokens[n]), f"{result.projections[n, -1]:+.4f}", *cells)
    console.print(shown)
    if difference is not None:
        per_layer = ", ".join(f"layer {layer} {d:+.4f}" for layer, d in zip(result.layers, difference.dataset(), strict=True))
        console.print(f"dataset projection difference (mean over conversations): {per_layer}", soft_wrap=True)
    speed = f"{len(conversations) / seconds:.1f} conversations/s"
    console.print(f"screened {len(conversations)} conversations in {seconds:.1f}s ({speed}); wrote " + ", ".join(str(p) for p in written))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pvrs.steering.screen import DEFAULT_TOKENS, TOKEN_CHOICES

    p = sub.add_parser(
        "screen",
        help="project every conversation of a dataset on a direction (flag trait-inducing training data)",
        description="Render each conversation of a dataset with the model's chat template, run them "
        "in token-budget batches (one forward per conversation, every chosen layer at once), and "
        "write each conversation's mean projection on the unit direction per layer "
        "(projections.parquet, projections.csv), the dataset's means per layer (dataset.csv) and a "
        "histogram (histogram.html). Tokens "
        "averaged (--tokens): assistant = every assistant-turn content token, what fine-tuning "
        "trains on; all = every token of the rendered conversation; last = the last "
        "assistant content token.",
    )
    add_model_and_store_args(p)
    p.add_argument(
        "--data", required=True,
        help="conversations: .jsonl/.json/.parquet rows with 'messages' (OpenAI chat format: "
        "[{role, content}], optional 'id'), or a folder saved by datasets (save_to_disk)",
    )
    p.add_argument("--split", help="split of a saved DatasetDict (needed when it has several)")
    p.add_argument(
        "--vector", required=True,
        help="the direction: a stored persona id (minus the baseline), 'assistant-axis', 'biography:ID', "
        "or a vector file (.safetensors/.npy/.pt/.gguf) or folder",
    )
    p.add_argument("--layer", nargs="+", required=True, help="block indices or ranges (12 or 10-14), all in one forward")
    p.add_argument("--tokens", choices=TOKEN_CHOICES, default=DEFAULT_TOKENS,
                   help="tokens averaged per conversation (default %(default)s; see the description)")
    p.add_argument("--batch-tokens", type=positive_int, default=DEFAULT_BATCH_TOKENS,
                   help="padded tokens per forward batch (default %(default)s)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="where the tables and histogram go (default $ARTIFACTS_DIR/screen/<model>/<vector>/<data>)")
    p.add_argument("--png", action="store_true", help="also write histogram.png (needs Chrome/Chromium for kaleido)")
    p.add_argument("--projection-difference", action="store_true",
                   help="also generate the model's own greedy answer to each prompt (the turns before the last "
                   "answer) and write each row's projection minus that answer's (own_<i>, difference_<i>), the "
                   "last prompt token's projection and cosine (prompt_last_<i>, prompt_last_cos_<i>), and the "
                   "dataset's means of them (dataset.csv); ranks by the difference")
    p.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="length of the model's own answers with --projection-difference (default %(default)s)")
    add_engine_args(p, "the model's own answers of --projection-difference (the projections run on transformers)")
    p.add_argument("--top", type=positive_int, default=10, help="conversations listed with the highest projection (default %(default)s)")
    p.set_defaults(handler=_cmd_screen)
