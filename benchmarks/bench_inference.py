"""Inference speed and memory of a sleep-capable model against its base model (``sleepify bench``).

A thin wrapper around :func:`sleepify.stages.bench.run_bench` (see its module docstring for what is
measured); prints the tables with the ratios measured in one run. Not a test.

    python benchmarks/bench_inference.py                 # contexts 1024, 4096, 16384 (~1-2 min on 1 thread)
    python benchmarks/bench_inference.py --quick         # contexts 256, 1024, 4096 (~10 s)
    python benchmarks/bench_inference.py MODEL_DIR --json out.json

Threads default to 1, as in the other CPU benchmarks: on a shared 2-core machine two OpenMP threads
contending with other processes make small ops much slower and the timings meaningless.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from sleepify.stages.bench import (  # noqa: E402
    DEFAULT_CONTEXTS,
    QUICK_CONTEXTS,
    format_report,
    run_bench,
    write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a sleep-capable model folder (default: build one)")
    parser.add_argument("--quick", action="store_true", help="short contexts, fewer steps and repeats")
    parser.add_argument("--contexts", help="comma-separated context lengths in tokens")
    parser.add_argument("--steps", type=int, help="decode steps timed per context (default 32; quick 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see docstring)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.contexts:
        contexts = [int(c) for c in args.contexts.split(",")]
    else:
        contexts = list(QUICK_CONTEXTS if args.quick else DEFAULT_CONTEXTS)
    res = run_bench(
        args.model,
        contexts=contexts,
        steps=args.steps or (8 if args.quick else 32),
        repeats=1 if args.quick else 5,
        device=args.device,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(format_report(res))
    if args.json:
        write_json(res, args.json)


if __name__ == "__main__":
    main()
