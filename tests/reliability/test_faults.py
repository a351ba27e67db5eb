"""Faults: ``kill -9`` in the middle of train / convert / export / data (subprocesses), a full disk
(an injected ``OSError(ENOSPC)`` at the write), locks, and the metrics log after a resume."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sleepify.fsutil import RunLock, clean_stale_temps
from sleepify.training.loop import cut_metrics
from tests.reliability.conftest import MODEL, run_cli, tree_digest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sleepify", "-q", *argv], cwd=cwd, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:  # noqa: ANN001
    """SIGKILL ``proc`` once ``ready()`` holds; False when it ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail("the process never reached the point to kill it at")


def _temps(folder: Path) -> list[Path]:
    return [
        p for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)
    ]


def test_kill_train_then_resume_gives_clean_metrics(workspace: Path, tmp_path: Path) -> None:
    """kill -9 after the first checkpoint (while later steps are logged); --resume finishes the run and
    metrics.jsonl holds every step exactly once."""
    run = tmp_path / "run"
    argv = ["train", str(workspace / "runs/tiny/convert"), "--data", str(workspace / "data/rule110"),
            "--steps", "6", "--N", "1", "--out", str(run), "train.checkpoint_every=2",
            "train.batch_size=2"]  # fmt: skip

    def logged_past_checkpoint() -> bool:
        metrics = run / "metrics.jsonl"
        return (run / "checkpoints").is_dir() and metrics.is_file() and metrics.read_text().count("\n") >= 3

    killed = _kill_when(_start(argv, tmp_path), logged_past_checkpoint)
    assert killed
    assert (run.parent / ".run.lock").exists()  # the dead process's lock: taken over below
    done = subprocess.run([sys.executable, "-m", "sleepify", "-q", *argv, "--resume"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "taking over the lock" in done.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert not (run.parent / ".run.lock").exists()
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("what", ["convert", "export", "data"])
def test_kill_while_publishing_keeps_the_old_output(what: str, workspace: Path, tmp_path: Path) -> None:
    """kill -9 once the temporary sibling exists: the old output is byte-identical, and the next run
    cleans the temporary."""
    out = tmp_path / "out"
    argv = {
        "convert": ["convert", MODEL, "--out", str(out), "--overwrite"],
        "export": ["export", str(workspace / "runs/tiny/warmup"), "--out", str(out), "--overwrite"],
        "data": [
            "data",
            "rule110",
            "--out",
            str(out),
            "--t",
            "0",
            "--n-train",
            "4000",
            "--n-test",
            "4",
            "--overwrite",
        ],  # fmt: skip
    }[what]
    source = {"convert": "runs/tiny/convert", "export": "exported", "data": "data/rule110"}[what]
    shutil.copytree(workspace / source, out)
    before = tree_digest(out)
    killed = _kill_when(_start(argv, tmp_path), lambda: bool(_temps(tmp_path)))
    if killed:
        assert _temps(tmp_path)
        clean_stale_temps(out)  # what the next run does first
    # the old output, or (killed while publishing, or finished first) the complete new one: never a half
    after = tree_digest(out)
    fresh = tmp_path / "fresh"
    if after != before:
        argv_fresh = [a if a != str(out) else str(fresh) for a in argv]
        subprocess.run([sys.executable, "-m", "sleepify", "-q", *argv_fresh], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        assert after.keys() == tree_digest(fresh).keys()
    assert not _temps(tmp_path)


@pytest.mark.parametrize("stage", ["convert", "train"])
def test_disk_full_is_one_line_and_keeps_the_old_output(
    stage: str,
    in_workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(args[-1] if args else "?"))

    out = tmp_path / "out"
    if stage == "convert":
        shutil.copytree(in_workspace / "runs/tiny/convert", out)
        monkeypatch.setattr("sleepify.convert.write_safetensors", full)
        argv = ["convert", MODEL, "--out", str(out), "--overwrite"]
    else:
        shutil.copytree(in_workspace / "runs/tiny/warmup", out)
        monkeypatch.setattr("sleepify.training.checkpoint.save_file", full)
        argv = ["train", "runs/tiny/convert", "--data", "data/rule110", "--steps", "1", "--out", str(out),
                "--overwrite", "train.batch_size=2"]  # fmt: skip
    before = tree_digest(tmp_path)
    code, _, err = run_cli(["-q", *argv], capsys)
    assert code == 2 and "Traceback" not in err
    assert "disk full" in err and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    assert tree_digest(tmp_path) == before


def test_too_little_space_is_refused_before_writing(
    in_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    code, _, err = run_cli(["-q", "convert", MODEL, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "needs about" in err and "10 B free" in err
    assert list(tmp_path.iterdir()) == []


def test_stale_lock_is_taken_over_and_live_one_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    lock = tmp_path / ".run.lock"
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # no such process
    with RunLock(folder):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            from sleepify.errors import SleepifyError

            lock.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname()}))
            with pytest.raises(SleepifyError, match=f"in use by process {child.pid}"):
                RunLock(folder).acquire()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    assert lock.exists()  # not ours any more (the child's): left alone on release


def test_cut_metrics(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo'
    )
    cut_metrics(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_a_kill_between_the_publish_renames_restores_the_old_output(tmp_path: Path) -> None:
    """publish_folder moves the old output aside, then the new one in: killed in between, the next start
    puts the old one back (it is the only complete copy) and removes the dead run's temporary."""
    probe = [sys.executable, "-c", "import os; print(os.getpid())"]
    pid = int(subprocess.run(probe, capture_output=True, text=True).stdout)  # a process that has ended
    final = tmp_path / "out"
    old = tmp_path / f".out.old-{pid}-1"
    old.mkdir()
    (old / "weights").write_text("complete")
    (tmp_path / f".out.tmp-{pid}-2").mkdir()
    clean_stale_temps(final)
    assert (final / "weights").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
