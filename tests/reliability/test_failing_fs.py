"""The contract on a file system that fails, for every stage that writes (convert, warmup, eval, export,
data): a read-only location, an immutable folder, an output deleted while the stage runs, and an output
path that is a file. Each ends in one line naming the output, exit 2, and nothing changed (no temporaries
left, an old output byte-identical). A full disk is tests/reliability/test_faults.py.

Where this machine allows it the failures are real (a read-only tmpfs mount, ``chattr +i``); elsewhere the
os calls that create, open and rename are patched to fail with the errno the real file system gives."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sleepify import fsutil
from tests.reliability.conftest import MODEL, run_cli, temps, tree_digest

STAGES = {  # stage -> argv without --out (built-in model, the shared workspace's data and runs)
    "convert": ["convert", MODEL],
    "warmup": ["warmup", "runs/tiny/convert", "--data", "data/rule110", "--steps", "1", "--N", "1",
               "train.batch_size=2"],
    "eval": ["eval", "runs/tiny/warmup", "--data", "data/rule110", "--no-plot"],
    "export": ["export", "runs/tiny/warmup"],
    "data": ["data", "rule110", "--t", "0", "--n-train", "8", "--n-test", "2"],
}  # fmt: skip


def _root_can(*cmd: str) -> bool:
    return shutil.which(cmd[0]) is not None and os.geteuid() == 0


@contextlib.contextmanager
def failing_writes(folder: Path, code: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Creating, opening for writing, renaming or removing anything under ``folder`` fails with ``code``
    (what a read-only mount or an immutable folder does), for this process."""
    folder = folder.resolve()

    def under(path: object) -> bool:
        try:
            return fsutil.is_inside(Path(os.fsdecode(path)).absolute(), folder)
        except (TypeError, ValueError):
            return False

    def deny(path: object) -> None:
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def wrap(name: str, module: object = os, path_args: int = 1) -> None:
        real = getattr(module, name)

        def patched(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            for arg in args[:path_args]:
                if under(arg):
                    deny(arg)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, patched)

    for name in ("mkdir", "rmdir", "unlink", "remove"):
        wrap(name)
    for name in ("rename", "replace"):
        wrap(name, path_args=2)
    real_open, real_os_open = builtins.open, os.open

    def open_(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    yield


@contextlib.contextmanager
def read_only(where: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A read-only folder: a tmpfs mounted ro where that is allowed, else simulated (EROFS)."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)]
    if _root_can("mount") and subprocess.run(mount, capture_output=True).returncode == 0:
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=False)
        return
    with failing_writes(where, errno.EROFS, monkeypatch):
        yield where


@contextlib.contextmanager
def immutable(where: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An immutable folder (``chattr +i``: not even root may add to it), else simulated (EPERM)."""
    where.mkdir()
    if (
        _root_can("chattr")
        and subprocess.run(["chattr", "+i", str(where)], capture_output=True).returncode == 0
    ):
        try:
            yield where
        finally:
            subprocess.run(["chattr", "-i", str(where)], check=False)
        return
    with failing_writes(where, errno.EPERM, monkeypatch):
        yield where


def _check(argv: list[str], out: Path, root: Path, capsys: pytest.CaptureFixture, said: str) -> None:
    before = tree_digest(root)
    code, _, err = run_cli(["-q", *argv, "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(out) in lines[0] and said in lines[0], lines[0]
    assert tree_digest(root) == before
    assert not temps(out.parent)


@pytest.mark.parametrize("stage", list(STAGES))
def test_read_only_location(stage: str, in_workspace: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    with read_only(tmp_path / "ro", monkeypatch) as folder:
        _check(STAGES[stage], folder / "out", in_workspace, capsys, "read-only file system")


@pytest.mark.parametrize("stage", list(STAGES))
def test_immutable_folder(stage: str, in_workspace: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    with immutable(tmp_path / "frozen", monkeypatch) as folder:
        _check(STAGES[stage], folder / "out", in_workspace, capsys, "operation not permitted")


@pytest.mark.parametrize("stage", list(STAGES))
def test_out_is_a_file(stage: str, in_workspace: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "out").write_text("mine\n")
    _check(STAGES[stage], tmp_path / "out", in_workspace, capsys, "is a file")
    assert (tmp_path / "out").read_text() == "mine\n"


@pytest.mark.parametrize("stage", list(STAGES))
def test_output_deleted_mid_run(stage: str, in_workspace: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """The folder being built is deleted just before it is published (another process, a cleanup job):
    one line, and an older output in --out is still there, byte-identical."""
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", *STAGES[stage], "--out", str(out)], capsys)  # an older output
    assert code == 0, err
    old = tree_digest(out)
    real = fsutil._publish

    def publish(tmp: Path, final: Path) -> None:
        shutil.rmtree(tmp)
        real(tmp, final)

    monkeypatch.setattr(fsutil, "_publish", publish)
    argv = [*STAGES[stage], "--overwrite"] if stage != "eval" else STAGES[stage]
    code, _, err = run_cli(["-q", *argv, "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and "deleted while the command ran" in lines[0] and str(out) in lines[0], err
    assert tree_digest(out) == old
    assert not temps(tmp_path)
