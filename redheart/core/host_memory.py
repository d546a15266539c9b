"""Peak host memory of this process, readable without importing torch (the data benches measure with it)."""

from __future__ import annotations

import sys


def peak_host_memory_bytes() -> int | None:
    """Peak resident set size of this process; None where the `resource` module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
