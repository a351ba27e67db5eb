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
from pathlib import Path

import pytest

from sleepify.fsutil import RunLock, clean_stale_temps, tensor_bytes
from sleepify.training.loop import cut_metrics
from tests.reliability.conftest import ENV, MODEL, kill_when, run_cli, stage_argv, start, temps, tree_digest


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

    killed = kill_when(start(argv, tmp_path), logged_past_checkpoint)
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
    argv = stage_argv(what, workspace, out)
    source = {"convert": "runs/tiny/convert", "export": "exported", "data": "data/rule110"}[what]
    shutil.copytree(workspace / source, out)
    before = tree_digest(out)
    killed = kill_when(start(argv, tmp_path), lambda: bool(temps(tmp_path)))
    if killed:
        assert temps(tmp_path)
        clean_stale_temps(out)  # what the next run does first
    # the old output, or (killed while publishing, or finished first) the complete new one: never a half
    after = tree_digest(out)
    fresh = tmp_path / "fresh"
    if after != before:
        argv_fresh = [a if a != str(out) else str(fresh) for a in argv]
        subprocess.run([sys.executable, "-m", "sleepify", "-q", *argv_fresh], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        assert after.keys() == tree_digest(fresh).keys()
    assert not temps(tmp_path)


def _full_oserror(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    raise OSError(errno.ENOSPC, "No space left on device", str(args[-1] if args else "?"))


def _full_torch_zip(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - what torch.save raises: no path
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def _full_safetensors(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - safetensors' Rust error: no path
    raise Exception(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
    )  # noqa: TRY002


TRAIN = ["train", "runs/tiny/convert", "--data", "data/rule110", "--steps", "1", "--overwrite",
         "train.batch_size=2"]  # fmt: skip
DISK_FULL = {  # stage -> (what fails, how, the old output to keep, argv, the path the line must name)
    "convert": ("sleepify.stages.convert.write_safetensors", _full_oserror, "runs/tiny/convert",
                ["convert", MODEL, "--overwrite"], "out"),
    "train-weights": ("sleepify.training.checkpoint.save_file", _full_oserror, "runs/tiny/warmup", TRAIN,
                      "out"),
    "train-optimizer": ("sleepify.training.checkpoint.torch.save", _full_torch_zip, "runs/tiny/warmup", TRAIN,
                        "out"),
    "export": ("sleepify.stages.export.write_remote_code", _full_safetensors, "exported",
               ["export", "runs/tiny/warmup", "--overwrite"], "out"),
    "data": ("datasets.DatasetDict.save_to_disk", _full_oserror, "data/rule110",
             ["data", "rule110", "--t", "0", "--n-train", "8", "--n-test", "2", "--overwrite"], "out"),
    "eval": ("sleepify.evaluation.report.format_table", _full_oserror, None,
             ["eval", "runs/tiny/warmup", "--data", "data/rule110"], "out"),
}  # fmt: skip


@pytest.mark.parametrize("stage", list(DISK_FULL))
def test_disk_full_is_one_line_and_keeps_the_old_output(
    stage: str,
    in_workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one line names the output (or the checkpoint) being written, roughly how much it needs where
    known, and the old output is byte-identical."""
    target, fail, old, argv, named = DISK_FULL[stage]
    out = tmp_path / "out"
    if old is not None:
        shutil.copytree(in_workspace / old, out)
    else:  # an earlier report in --out, next to a file of the user's
        code, _, err = run_cli(["-q", *argv, "--out", str(out)], capsys)
        assert code == 0, err
        (out / "notes.txt").write_text("mine\n")
    monkeypatch.setattr(target, fail)
    before = tree_digest(tmp_path)
    code, _, err = run_cli(["-q", *argv, "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: disk full while writing {tmp_path / named}"), (
        err
    )
    if stage.startswith("train"):  # --overwrite: the run was built aside; nothing to resume
        assert "needs about" in errors[0] and "nothing was replaced" in errors[0]
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


def test_disk_full_mid_run_names_the_checkpoint_and_the_resume(
    in_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 1's checkpoint is written, step 2's hits a full disk (torch's zip writer, no path of its own):
    the line names step 2's checkpoint and step 1's, no half checkpoint is left, and --resume finishes."""
    import torch

    real_save, calls = torch.save, []

    def save(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 3:  # step 1: optimizer + trainer state; then step 2's optimizer state
            _full_torch_zip()
        return real_save(*args, **kwargs)

    run = tmp_path / "run"
    argv = ["-q", "train", "runs/tiny/convert", "--data", "data/rule110", "--steps", "3", "--out", str(run),
            "train.batch_size=2", "train.checkpoint_every=1"]  # fmt: skip
    monkeypatch.setattr("sleepify.training.checkpoint.torch.save", save)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    line = [x for x in err.splitlines() if x.startswith("error:")][-1]
    ckpts = run / "checkpoints"
    assert line.startswith(f"error: disk full while writing {ckpts / 'step-0000002'} (needs about "), line
    assert f"--resume (the last good checkpoint {ckpts / 'step-0000001'} is kept)" in line, line
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000001"]
    monkeypatch.setattr("sleepify.training.checkpoint.torch.save", real_save)
    code, _, err = run_cli([*argv, "--resume"], capsys)
    assert code == 0, err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_tensor_bytes_counts_what_is_written() -> None:
    import torch

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied: written once
    model = torch.nn.Sequential(emb, head, torch.nn.BatchNorm1d(4))
    weights = 10 * 4 * 4
    norm = (4 + 4) * 4 + (4 + 4) * 4 + 8  # weight, bias; running mean, var; num_batches_tracked (int64)
    assert tensor_bytes(model) == weights + norm
    state = {"a": torch.zeros(3, dtype=torch.bfloat16), "b": [torch.zeros(2), {"c": torch.zeros(1)}], "s": 3}
    assert tensor_bytes(state) == 3 * 2 + 2 * 4 + 4
