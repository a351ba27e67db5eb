"""Start-up time of the command line: ``sleepify --help`` and every sub-command's ``--help``.

Usage: ``python benchmarks/bench_cli.py [--repeats 3]``. Each is a fresh ``python -m sleepify ...`` process
(what a user waits for), best of ``--repeats``; also ``python -c pass`` (the interpreter's own start-up)
and ``import torch`` for scale. Target: every ``--help`` under 1 s. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(cmd: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from sleepify.cli.main import COMMANDS

    py = [sys.executable]
    rows = [("python -c pass", best_of([*py, "-c", "pass"], args.repeats)),
            ("python -c 'import torch'", best_of([*py, "-c", "import torch"], args.repeats)),
            ("sleepify --help", best_of([*py, "-m", "sleepify", "--help"], args.repeats))]  # fmt: skip
    for name in sorted(COMMANDS):
        rows.append(
            (f"sleepify {name} --help", best_of([*py, "-m", "sleepify", name, "--help"], args.repeats))
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# CLI start-up, best of {args.repeats}, {os.cpu_count()} cores, load average {load:.2f}\n")
    print("| command | seconds |\n|---|---:|")
    for label, seconds in rows:
        print(f"| `{label}` | {seconds:.2f} |")
    helps = [s for label, s in rows if label.startswith("sleepify")]
    print(f"\nslowest --help: {max(helps):.2f} s (target < 1 s: {'met' if max(helps) < 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
