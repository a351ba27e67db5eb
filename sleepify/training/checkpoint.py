"""Training checkpoints: written to a temporary folder and renamed, so a kill (or a full disk) mid-save
never corrupts the last good checkpoint.

A checkpoint folder ``checkpoints/step-000123/`` holds ``model.safetensors`` (the full weights keyed by
parameter name: safetensors only, no pickle), ``optimizer.pt`` (the optimizer state keyed by parameter
name), ``trainer_state.pt`` (scheduler, RNG states and data position) — both plain tensors and numbers,
loaded with ``weights_only=True`` — and ``meta.json``. Full, name-keyed state
(``sleepify/training/parallel.py``) makes a checkpoint independent of how the run was distributed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sleepify.fsutil import disk_full_names, tensor_bytes

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
TMP_SUFFIX = ".tmp"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((3, tuple(int(v) for v in py[:-1]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.suffix != TMP_SUFFIX]
    return sorted(f for f in found if (f / "meta.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f"{final.name}{TMP_SUFFIX}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    need = tensor_bytes(weights) + tensor_bytes(optimizer_state)
    last = latest_checkpoint(run_dir)
    hint = (
        f"free some space, then run the same command with --resume (the last good checkpoint {last} is kept)"
        if last is not None
        else "free some space and start the run again (no checkpoint was written yet)"
    )
    try:
        with disk_full_names(final, need, hint):  # torch's zip writer names no path of its own
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(trainer_state, tmp / "trainer_state.pt")
            # meta.json last: its presence marks the checkpoint complete
            (tmp / "meta.json").write_text(json.dumps({"step": step, **(meta or {})}, indent=2))
            for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half checkpoint is never left behind
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor] | None  # None when not read
    trainer_state: dict[str, Any]
    meta: dict[str, Any]


def load_checkpoint(
    path: str | Path, expected: dict[str, tuple[int, ...]] | None = None, full: bool = True
) -> Checkpoint:
    """Read a checkpoint's weights and trainer state; the optimizer state is read apart, by
    :func:`read_optimizer_state` (so that a resume holds one of the two read copies at a time).
    ``expected``: name -> shape of the weights the model holds; any difference is an error that lists the
    mismatched weights. ``full=False`` skips the weights (the ranks of a sharded run that receive them from
    rank 0)."""
    path = Path(path)
    weights = None
    if not (path / "optimizer.pt").is_file():
        from sleepify.errors import TrainingError

        raise TrainingError(
            f"checkpoint {path} has no optimizer.pt (written by an older sleepify, whose checkpoints do not "
            "resume): start the stage again without --resume"
        )
    if full:
        weights = _read(path / "model.safetensors", lambda f: load_file(str(f)))
    if weights is not None and expected is not None:
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        shapes = [
            f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k])}"
            for k in sorted(set(expected) & set(weights))
            if tuple(weights[k].shape) != tuple(expected[k])
        ]
        if missing or unexpected or shapes:
            from sleepify.errors import ModelLoadError

            raise ModelLoadError(
                f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}, "
                f"other shapes {shapes}"
            )
    trainer_state = _read(path / "trainer_state.pt", lambda f: torch.load(f, weights_only=True))
    meta = _read(path / "meta.json", lambda f: json.loads(f.read_text()))
    return Checkpoint(weights, trainer_state, meta)


def read_optimizer_state(path: str | Path) -> dict[str, Any]:
    """The optimizer state of checkpoint ``path`` (``optimizer.pt``), keyed by parameter name."""
    return _read(Path(path) / "optimizer.pt", lambda f: torch.load(f, weights_only=True))


def _read(file: Path, read: Any) -> Any:
    """``read(file)``, with a damaged file (empty, truncated, a pickle payload that ``weights_only``
    refuses, not JSON) as one line naming it. EOFError in particular must not reach click, which takes it
    for Ctrl-C."""
    from sleepify.errors import TrainingError, clip

    try:
        return read(file)
    except Exception as err:  # noqa: BLE001 - torch, safetensors and json raise many kinds
        if isinstance(err, OSError) and err.errno is not None:
            raise  # a read-only or vanished file: sleepify.fsutil words those
        text = clip((str(err).strip().splitlines() or [""])[0], 160)
        what = f"{type(err).__name__}: {text}" if text else type(err).__name__
        raise TrainingError(
            f"checkpoint file {file} is damaged or not a sleepify checkpoint ({what}): delete "
            f"{file.parent} to resume from the checkpoint before it, or start again without --resume"
        ) from None
