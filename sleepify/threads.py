"""CPU threading policy of the command line, applied before torch is imported.

Why: torch's OpenMP threads busy-wait (spin) between parallel regions by default. When another process
also uses the cores, the spinning threads take turns with it instead of working: on a 2-core machine
next to one busy single-threaded process, ``sleepify quickstart --quick`` took 64–77 s with torch's
defaults against ~6 s with a passive wait (threads sleep between regions). A passive wait costs little
on a quiet machine (see docs/performance.md, "CPU threading"), so it is the default.

Precedence, highest first:

1. ``sleepify --threads N``: ``N`` intra-op threads (``OMP_NUM_THREADS=N`` for this process and the
   processes it starts, e.g. torchrun's ranks; ``torch.set_num_threads`` if torch is already imported).
2. The user's own environment: an ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS`` already set is kept.
3. The default: ``OMP_WAIT_POLICY=PASSIVE``; torch picks the thread count (one per core).

OpenMP reads these variables once, when torch loads it, so they only take effect when set before
``import torch``: the CLI imports torch only inside commands, after ``apply_thread_policy`` ran.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["DEFAULT_WAIT_POLICY", "apply_thread_policy"]

DEFAULT_WAIT_POLICY = "PASSIVE"


def apply_thread_policy(threads: int | None = None, environ: MutableMapping[str, str] | None = None) -> str:
    """Apply the policy above to ``environ`` (default ``os.environ``); returns a one-line description.

    Example::

        apply_thread_policy()            # before `import torch`
        apply_thread_policy(threads=1)   # what `sleepify --threads 1` does
    """
    env = os.environ if environ is None else environ
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        env["OMP_NUM_THREADS"] = str(threads)
        if environ is None and "torch" in sys.modules:  # too late for OpenMP's env; torch can still resize
            import torch

            torch.set_num_threads(threads)
    if "OMP_WAIT_POLICY" not in env:
        env["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
    count = env.get("OMP_NUM_THREADS", "torch default")
    return f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, threads={count}"
