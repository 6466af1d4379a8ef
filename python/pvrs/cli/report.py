"""End-of-run summaries printed by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from pvrs.extraction.results import ExtractionResult


def print_extraction_summary(console: Console, result: ExtractionResult, root: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="pvrs extract: summary")
    for col in ("persona", "variant", "status", "samples", "detail"):
        table.add_column(col)
    style = {"written": "green", "skipped": "yellow", "failed": "red"}
    for o in result.outcomes:
        table.add_row(o.persona_id, o.variant, f"[{style[o.status]}]{o.status}[/]", str(o.n_samples or ""), escape(o.reason))
    console.print(table)
    reuse = f", {result.computed_share:.0%} computed: prefix reused" if result.computed_share < 1 else ""
    console.print(
        f"{result.count('written')} written, {result.count('skipped')} skipped, {result.count('failed')} failed; "
        f"{result.tokens:,} conversation tokens in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} tok/s"
        f"{reuse}). Store: {root}"
    )
    if result.replicas:
        console.print("Ray replicas: " + ", ".join(f"{name}: {n}" for name, n in sorted(result.replicas.items())))
