"""Export of the report's figures: one self-contained HTML page (plotly.js inlined, so it
opens offline) and one PNG per figure (kaleido + a headless Chrome/Chromium)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pvrs.errors import RenderError

if TYPE_CHECKING:
    import plotly.graph_objects as go

from pvrs.analysis.plots import still

PNG_SCALE = 2


@dataclass(frozen=True)
class Section:
    """One figure of the report: `slug` names its PNG, `caption` says how to read it."""

    slug: str
    title: str
    caption: str
    figure: go.Figure


def png_browser() -> str | None:
    """The Chrome/Chromium kaleido would use for PNG export (its own finder), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except (ImportError, RuntimeError, OSError):
        return None


def write_pngs(sections: Sequence[Section], directory: Path) -> list[Path]:
    """One PNG per section, rendered by kaleido in one headless browser session."""
    import plotly.io as pio

    paths = [directory / f"{s.slug}.png" for s in sections]
    if not sections:
        return paths
    if png_browser() is None:
        raise RenderError(
            "PNG export needs Chrome or Chromium for kaleido: `apt-get install chromium` "
            "(or `plotly_get_chrome`), or pass --no-png for the HTML report only"
        )
    directory.mkdir(parents=True, exist_ok=True)
    figures = [still(s.figure) for s in sections]
    try:
        # write_images renders at its default size unless told each figure's own.
        pio.write_images(
            figures,
            paths,
            scale=PNG_SCALE,
            width=[f.layout.width for f in figures],
            height=[f.layout.height for f in figures],
        )
    except Exception as exc:  # kaleido raises plain exceptions from the browser side
        raise RenderError(f"PNG export to {directory} failed: {exc}") from exc
    return paths


def write_html(
    sections: Sequence[Section],
    path: Path,
    title: str,
    facts: Sequence[tuple[str, str]],
    links: Sequence[tuple[str, str]] = (),
) -> Path:
    """A single offline HTML page: a facts table, links, then each figure with its caption."""
    from plotly.offline import get_plotlyjs

    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    toc = "".join(f'<li><a href="#{s.slug}">{esc(s.title)}</a></li>' for s in sections)
    link_items = "".join(f'<li><a href="{esc(href)}">{esc(text)}</a></li>' for text, href in links)
    body = "".join(
        f'<section id="{s.slug}"><h2>{esc(s.title)}</h2><p>{esc(s.caption)}</p>'
        + s.figure.to_html(full_html=False, include_plotlyjs=False)
        + "</section>"
        for s in sections
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
        "th{text-align:left;padding-right:1em}section{margin-top:2em}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{esc(title)}</h1><table>{rows}</table>"
        f"<h3>Figures</h3><ul>{toc}</ul>"
        + (f"<h3>Tables</h3><ul>{link_items}</ul>" if link_items else "")
        + body
        + "</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
