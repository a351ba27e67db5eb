"""CPU threading under load: ``sleepify quickstart --quick`` on a quiet machine and next to one busy process.

Usage: ``python benchmarks/bench_threads.py [--repeats 2] [--policies cli,torch-default,threads-1]``

Each run is a fresh process (OpenMP reads its environment once, when torch loads it):

- ``cli``: ``python -m sleepify quickstart --quick``, the command line's policy (``sleepify/threads.py``:
  passive OpenMP wait, one thread per core);
- ``torch-default``: the same pipeline through the Python API (``run_quickstart``), which applies no policy:
  torch's and OpenMP's defaults (threads spin between parallel regions);
- ``threads-1``: ``python -m sleepify --threads 1 quickstart --quick``.

"loaded" runs next to one busy single-threaded Python process (``while True: pass``) started just
before and killed right after. The user's ``OMP_*`` variables are removed for every run. Target for the
CLI policy: loaded / quiet <= 1.5. Results: docs/performance.md, "CPU threading".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = (
    "import sys; from pathlib import Path; from sleepify.quickstart import QuickstartPlan, run_quickstart; "
    "run_quickstart(QuickstartPlan.quick(Path(sys.argv[1])), overwrite=True)"
)


def command(policy: str, out: Path) -> list[str]:
    cli = [sys.executable, "-m", "sleepify"]
    tail = ["quickstart", "--quick", "--overwrite", "--out", str(out)]
    if policy == "cli":
        return [*cli, *tail]
    if policy == "threads-1":
        return [*cli, "--threads", "1", *tail]
    if policy == "torch-default":
        return [sys.executable, "-c", API, str(out)]
    raise SystemExit(f"unknown policy {policy!r}")


def run_once(policy: str, loaded: bool, timeout: float) -> float | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    busy = None
    if loaded:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            try:
                subprocess.run(
                    command(policy, Path(tmp) / "qs"),
                    env=env,
                    cwd=tmp,
                    check=True,
                    timeout=timeout,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            except subprocess.TimeoutExpired:
                return None
            return time.perf_counter() - start
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", default="cli,torch-default,threads-1")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (runs per cell); the best is reported")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a run counts as '>'")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    policies = args.policies.split(",")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# quickstart --quick, {os.cpu_count()} cores, load average before: {load:.2f}", flush=True)
    # rounds interleave the policies, so a change in the machine's background load hits each alike
    times: dict[str, dict[str, list[float | None]]] = {p: {"quiet": [], "loaded": []} for p in policies}
    for _ in range(args.repeats):
        for policy in policies:
            for loaded in (False, True):
                times[policy]["loaded" if loaded else "quiet"].append(run_once(policy, loaded, args.timeout))
    results: dict[str, dict[str, float | None]] = {}
    print("\n| policy | quiet (s) | next to one busy process (s) | loaded / quiet |\n|---|---:|---:|---:|")
    for policy in policies:
        cell = {k: min((t for t in v if t is not None), default=None) for k, v in times[policy].items()}
        results[policy] = cell
        quiet, loaded_s = cell["quiet"], cell["loaded"]
        ratio = f"{loaded_s / quiet:.2f}" if quiet and loaded_s else f"> {args.timeout / (quiet or 1):.1f}"
        shown = [f"{v:.1f}" if v is not None else f"> {args.timeout:.0f}" for v in (quiet, loaded_s)]
        target = " (target <= 1.5)" if policy == "cli" else ""
        print(f"| {policy} | {shown[0]} | {shown[1]} | {ratio}{target} |", flush=True)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average after: {load_after:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps({"cores": os.cpu_count(), "load_before": load, "results": results, "runs": times})
        )


if __name__ == "__main__":
    main()
