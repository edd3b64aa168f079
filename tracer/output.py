"""Writing reports to standard output whole (an I/O edge).

Why this exists: under PYTHONUNBUFFERED (common in containers and CI) the stream beneath
sys.stdout is the raw file. A write into a pipe can then come back short when a signal arrives
mid-write (a child exiting, a timer), and TextIOWrapper silently drops the rest: a JSON report
cut in the middle, with exit status 0. Here the bytes go out in a loop until all are written.
"""

from __future__ import annotations

import os
import sys


def write_stdout(text: str) -> None:
    """All of `text` on standard output (BrokenPipeError passes up to the caller)."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (an embedding, a test)
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", errors="replace"))
    while data:
        data = data[os.write(fd, data):]
