"""Ctrl-C in tests that does not depend on how the test run itself was started."""

from __future__ import annotations

import signal


def takes_ctrl_c() -> None:
    """`Popen(preexec_fn=...)`: the child gets SIGINT's default action back, so Python in it
    installs its KeyboardInterrupt handler. A test run started in the background by a
    non-interactive shell (as CI may be) has SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
