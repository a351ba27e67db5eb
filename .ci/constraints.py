#!/usr/bin/env python3
"""constraints.txt: the exact versions of sleepify's dependency closure (extra ``dev``) that CI last passed
with, so that ``pip install -e ".[dev]" -c constraints.txt`` reproduces a known-good environment.

    python .ci/constraints.py write   # after a green run: record what is installed
    python .ci/constraints.py diff    # what a fresh install resolved differently (information, exit 0)

torch is left out: it is installed first and separately (the CPU build here, the user's CUDA build on a GPU).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"sleepify", "torch", "setuptools", "pip", "wheel"}
HEADER = (
    "# The exact versions CI last passed with (written by `python .ci/constraints.py write`).\n"
    '# Reproducible install: pip install torch==2.13.0 && pip install -e ".[dev]" -c constraints.txt\n'
)


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(root: str = "sleepify", extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    seen: dict[str, str] = {}

    def walk(name: str, extras: tuple[str, ...]) -> None:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            return
        if _key(name) in seen:
            return
        seen[_key(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None:
                envs = [{"extra": e} for e in extras] or [{"extra": ""}]
                if not any(req.marker.evaluate(env) for env in envs):
                    continue
            walk(req.name, tuple(req.extras))

    walk(root, extras)
    return {k: v for k, v in sorted(seen.items()) if k not in SKIP}


def read(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_key(name)] = version.strip()
    return pins


def main(argv: list[str]) -> int:
    path = ROOT / "constraints.txt"
    mode = argv[1] if len(argv) > 1 else "diff"
    now = installed_closure()
    if mode == "write":
        path.write_text(HEADER + "".join(f"{k}=={v}\n" for k, v in now.items()))
        print(f"wrote {path} ({len(now)} packages)")
        return 0
    if mode == "diff":
        pinned = read(path) if path.is_file() else {}
        changed = {k: (pinned.get(k), v) for k, v in now.items() if pinned.get(k) != v}
        for name, (old, new) in changed.items():
            print(f"constraints.txt: {name} {old or '(new)'} -> {new} in this install")
        if not changed:
            print("constraints.txt: this install matches it exactly")
        return 0
    print(f"usage: {argv[0]} write|diff", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
