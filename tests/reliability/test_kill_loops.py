"""``kill -9`` at many points, in a loop: a training run killed again and again (mid-step, while a
checkpoint is written, while the model is published) ends, after ``--resume``, bit-identical to an
uninterrupted run; convert / export / data killed at moments spread over their run always leave the
previous output or the complete new one. And SIGINT / SIGTERM inside a stage: exit 130 / 143, one line
naming the last good checkpoint and the exact resume command, which then finishes the run."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sleepify.fsutil import clean_stale_temps
from tests.reliability.conftest import CLI, ENV, kill_when, stage_argv, start, temps, tree_digest


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *argv], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def _steps(run: Path) -> list[int]:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]


SLOW_WRITES = """
import os, time
_fsync = os.fsync
def _slow_fsync(fd):  # a checkpoint fsyncs its 4 files inside its .tmp folder: a window to kill in
    time.sleep(0.1)
    return _fsync(fd)
os.fsync = _slow_fsync
import sleepify.fsutil as _fs
_publish = _fs.publish_folder
def _slow_publish(tmp, final):  # the trained model's temporary folder lives a little longer
    time.sleep(0.3)
    return _publish(tmp, final)
_fs.publish_folder = _slow_publish
"""


def slow_writes_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with SLOW_WRITES installed as a ``sitecustomize``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_WRITES)
    return {**ENV, "PYTHONPATH": f"{site}{os.pathsep}{ENV['PYTHONPATH']}"}


def test_train_killed_again_and_again_ends_identical(workspace: Path, tmp_path: Path) -> None:
    """The writes are slowed down (a ``sitecustomize`` in the killed processes) so that the kills land
    inside a checkpoint write and a model publish for certain, not by luck of timing."""
    steps = 8
    slow = slow_writes_env(tmp_path)

    def argv(out: Path) -> list[str]:
        return ["train", str(workspace / "runs/tiny/convert"), "--data", str(workspace / "data/rule110"),
                "--steps", str(steps), "--N", "2", "--out", str(out), "train.checkpoint_every=1",
                "train.batch_size=2", "train.log_every=1"]  # fmt: skip

    ref = tmp_path / "ref"
    _run(argv(ref), tmp_path)

    run = tmp_path / "run"
    points = {  # where to kill
        "mid-step": lambda: len(_steps(run)) > len(seen),
        "writing a checkpoint": lambda: any(p.suffix == ".tmp" for p in (run / "checkpoints").glob("step-*")),
        "publishing the model": lambda: any(".model.tmp-" in p.name for p in run.glob(".model.tmp-*")),
    }
    # each kill advances the run by at most one step; the model is published only at the very end
    schedule = ["mid-step", "writing a checkpoint"] * 2 + ["publishing the model"]
    for name in schedule:
        seen = _steps(run)
        assert kill_when(start([*argv(run), "--resume", "auto"], tmp_path, slow), points[name]), name
    _run([*argv(run), "--resume", "auto"], tmp_path)  # the last resume, not killed
    assert _steps(run) == list(range(1, steps + 1))  # every step logged once: no duplicates, no gaps
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    a, b = load_file(ref / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert not temps(run) and not list((run / "checkpoints").glob("*.tmp"))
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize("what", ["convert", "export", "data"])
def test_killed_at_moments_spread_over_the_run(what: str, workspace: Path, tmp_path: Path) -> None:
    """Killed at 6 moments from start-up to the end: after each kill (and the cleanup the next start
    does) the output is complete (every file of a full output, nothing extra); never half, never gone."""
    out = tmp_path / "out"
    argv = stage_argv(what, workspace, out)
    t0 = time.monotonic()
    _run(argv, tmp_path)
    duration = time.monotonic() - t0
    files = tree_digest(out).keys()
    killed = 0
    for i in range(1, 7):
        proc = start(argv, tmp_path)
        time.sleep(duration * i / 6)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        clean_stale_temps(out)  # what the next start does first
        assert tree_digest(out).keys() == files, f"kill {i}/6"
        assert not temps(tmp_path)
    assert killed >= 3


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])  # fmt: skip
def test_signal_inside_a_stage_names_the_resume_command(
    sig: signal.Signals, code: int, word: str, workspace: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["train", str(workspace / "runs/tiny/convert"), "--data", str(workspace / "data/rule110"),
            "--steps", "40", "--N", "1", "--out", str(run), "train.checkpoint_every=2", "train.batch_size=2",
            "train.log_every=1"]  # fmt: skip
    # slowed checkpoint writes (>= 0.4 s each, 20 of them): the signal lands mid-run even when this
    # process is scheduled late on a busy machine (the tiny run alone can finish 40 steps in a blink)
    proc = start(argv, tmp_path, slow_writes_env(tmp_path))
    end = time.monotonic() + 300
    while not [p for p in (run / "checkpoints").glob("step-*/meta.json") if p.parent.suffix != ".tmp"]:
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal"
    status = Path(f"/proc/{proc.pid}/status")  # which signals the child ignores (Linux), for the message
    ignored = [x for x in status.read_text().splitlines() if x.startswith("SigIgn")] if status.exists() else 0
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (err, ignored)
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.strip()][-1]
    assert f"train {word}; the last good checkpoint is {run / 'checkpoints'}" in line, line
    assert not (tmp_path / ".run.lock").exists()
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "sleepify" and command[-1] == "--resume"
    _run(command[1:], tmp_path)  # the printed command, as a user would paste it
    assert _steps(run) == list(range(1, 41))
    assert (run / "model" / "model.safetensors").is_file()
