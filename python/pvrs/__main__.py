from __future__ import annotations

from pvrs.cli import main

raise SystemExit(main())
