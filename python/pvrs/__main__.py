from __future__ import annotations

from pvrs.cli import entry

raise SystemExit(entry())
