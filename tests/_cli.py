"""The command that starts the real ``dreamgen`` CLI in a subprocess, as a terminal would.

A process started from a background shell (``cmd &``, ``nohup``, some CI runners) inherits
SIGINT *ignored* (POSIX), and then neither Python nor asyncio handles Ctrl-C: a test that
sends SIGINT would wait forever for a CLI that never saw it. This restores the default
handler before running ``python -m dreamgen_async``, as an interactive terminal gives.
"""

from __future__ import annotations

import sys

DREAMGEN = (
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('dreamgen_async', run_name='__main__', alter_sys=True)",
)
