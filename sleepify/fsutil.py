"""Writing outputs so that nothing is lost: folders are built in a temporary sibling and published in one
step, leftovers of killed runs are cleaned, a run folder is locked while a process writes it, and a full
disk ends in one line that names the path.

The contract every stage follows (``convert``, ``warmup``, ``train``, ``export``, ``data``):

1. check everything cheap first (:func:`refuse_inputs`: no input the stage reads lies inside the output);
2. build the output in ``.NAME.tmp-PID-NS`` next to it (:func:`staging`);
3. :func:`publish_folder` at the very end: the old output (if any) is replaced only then;
4. point ``runs/latest`` at the new folder with :func:`write_pointer` (written atomically, never dangling).

Temporaries whose process is dead are removed at the next start (:func:`clean_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from sleepify.errors import OutputError, SleepifyError, clip, one_line

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-\d+$")


# errno -> what it means for the path, and what to do (the one classification of OS errors on outputs)
OS_ERRORS = {
    errno.EROFS: ("is on a read-only file system", "choose an --out on a writable file system"),
    errno.EPERM: (
        "cannot be changed (operation not permitted: an immutable folder, `chattr +i`?)",
        "lift the protection (chattr -i) or choose another --out",
    ),
    errno.EACCES: (
        "is not writable by this user (permission denied)",
        "fix its permissions or choose another --out",
    ),
    errno.ENOTDIR: ("is not a folder (it, or a folder above it, is a file)", "choose another --out"),
    errno.EISDIR: ("is a folder where a file was expected", "choose another --out"),
    errno.EEXIST: ("already exists as a file", "choose another --out"),
    errno.ENOENT: (
        "could not be written: a folder it needs was deleted while the command ran",
        "run it again",
    ),
    errno.ENAMETOOLONG: ("is a name too long for the file system", "use a shorter path"),
    errno.ELOOP: ("is a loop of symbolic links", "choose another --out"),
}


def os_error_message(err: BaseException, where: Path | str | None = None, output: bool = True) -> str | None:
    """The one line for an OS error while writing an output (a full disk, a read-only or immutable
    location, a path that is a file, a missing permission, a folder deleted mid-run), naming ``where``
    (else the file the error names); None for any other error. ``output=False``: an OS error met anywhere
    else (the CLI's last resort), worded without assuming it was an output's."""
    full = disk_full_message(err, Path(where) if where else None)
    if full is not None:
        return full
    if not isinstance(err, OSError) or err.errno not in OS_ERRORS:
        return None
    if not output:
        name = f"{one_line(str(err.filename), 300)}: " if err.filename else ""
        return f"{name}{err.strerror or 'OS error'} ({errno.errorcode[err.errno]})"
    path = where or err.filename or "the output"
    meaning, todo = OS_ERRORS[err.errno]
    named = err.filename if where and err.filename and str(err.filename) != str(where) else None
    at = f" ({one_line(str(named), 200)})" if named else ""
    return f"{one_line(str(path), 300)} {meaning}{at}: {todo}; nothing was replaced"


@contextlib.contextmanager
def output_errors(where: Path | str | None = None, *, under: Path | None = None) -> Iterator[None]:
    """OS errors in the block (see :func:`os_error_message`) as one :class:`OutputError` line naming
    ``where``; used where outputs are created, locked and published. ``under``: only errors on a file in
    this folder are the output's (a stage body also reads inputs, whose errors are not)."""
    try:
        yield
    except SleepifyError:
        raise
    except OSError as err:
        message = os_error_message(err, where)
        theirs = under is not None and (err.filename is None or not is_inside(Path(err.filename), under))
        if message is None or theirs:
            raise
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(message) from None
        raise OutputError(message) from None


def check_output_path(final: Path, flag: str = "--out") -> None:
    """One line when ``final`` (or a folder above it) exists and is not a folder: nothing can go there."""
    probe = Path(final)
    while True:
        if probe.exists() or probe.is_symlink():
            if not probe.is_dir():
                what = f"{flag} {final}" if probe == Path(final) else f"{flag} {final}: {probe}"
                raise OutputError(f"{clip(what, 300)} is a file, not a folder: choose another {flag}")
            return
        if probe == probe.parent:
            return
        probe = probe.parent


def publish_folder(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final``. An existing ``final`` is moved aside first and
    removed only after the new folder is in place (a rename is atomic within one filesystem)."""
    with output_errors(final):
        _publish(tmp, final)


def _publish(tmp: Path, final: Path) -> None:
    if not tmp.is_dir():  # the folder being built was deleted under us: the old output stays
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp))
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
        final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            old.rename(final)  # put the old output back: a failed publish changes nothing
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def temp_sibling(final: Path) -> Path:
    """``.NAME.tmp-PID-NS`` next to ``final`` (same filesystem, so publishing is a rename)."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(final: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``final`` left by dead processes;
    returns what was removed (a live process's temporaries are left alone)."""
    parent = final.parent
    if not parent.is_dir():
        return []
    removed = []
    for entry in sorted(parent.iterdir(), key=lambda e: ".old-" not in e.name):  # restores come first
        m = _TEMP.match(entry.name)
        if not m or m.group("name") != final.name or pid_alive(int(m.group("pid"))):
            continue
        if ".old-" in entry.name and not final.exists():
            # killed between publish_folder's two renames: the old output is the only complete one
            entry.rename(final)
            pid = m.group("pid")
            log.warning("restored %s from %s, left by a killed run (process %s)", final, entry, pid)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        log.warning("removed %s, left by a killed run (process %s)", entry, m.group("pid"))
    return removed


@contextlib.contextmanager
def staging(
    final: Path, need: int | None = None, *, names: Path | None = None, hint: str | None = None
) -> Iterator[Path]:
    """A fresh temporary sibling of ``final`` to build the output in; removed if the block fails (the
    caller publishes it with :func:`publish_folder` as the block's last step). A full disk inside the
    block is one line naming ``names`` (default ``final``; e.g. where the output ends up when ``final``
    itself lies in a folder being built aside), ``need`` bytes when given, and ``hint`` (what to do). Any
    other OS error on the output (read-only, immutable, not a folder, deleted mid-run) is one line too."""
    check_output_path(final)
    with output_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(final)
        tmp = temp_sibling(final)
        tmp.mkdir()
    try:
        with (
            output_errors(names or final, under=final.parent),
            disk_full_names(names or final, need, hint, outer=True),
        ):
            yield tmp
    except OutputError as err:  # from an output built inside this one: name where it ends up, not tmp
        raise OutputError(str(err).replace(str(tmp), str(names or final))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    try:
        p, f = Path(path).resolve(), Path(folder).resolve()
    except OSError:
        return False
    return p == f or f in p.parents


def refuse_inputs(out: Path, inputs: dict[str, object], flag: str = "--out") -> None:
    """The one guard every stage runs before it writes ``out``: no input it reads (``what -> path``: the
    model, ``--data``, the recipes, the checkpoint to resume from, a prompt file) may be ``out`` or lie
    inside it, since writing ``out`` (``--overwrite`` replaces it whole) would change or delete the input
    mid-run. Inputs that are not local paths (a Hub id, None) are skipped."""
    for what, inp in inputs.items():
        if inp is None or inp == "":
            continue
        paths = inp if isinstance(inp, (list, tuple)) else [inp]
        for path in paths:
            path = Path(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else None
            if path is None or not (path.exists() or path.is_symlink()):
                continue
            if is_inside(path, out):
                raise SleepifyError(
                    f"{what} {clip(str(path), 200)} lies inside {clip(str(out), 200)}, which {flag} would "
                    f"replace or write into: choose another {flag} (or copy the input elsewhere first)"
                )


def write_pointer(pointer: Path, target: Path) -> None:
    """Write ``runs/latest`` (one line: a folder's absolute path) atomically."""
    with output_errors(pointer):
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.parent / f".{pointer.name}.tmp-{os.getpid()}-{time.time_ns()}"
        tmp.write_text(str(Path(target).resolve()) + "\n")
        os.replace(tmp, pointer)


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")  # binary, named so: `--memory 24GiB` reads back as printed


def human_size(n: float | None, unit: str | None = None) -> str:
    """The project's one size formatter: bytes as ``"1.5 GiB"``; with ``unit`` (``"MiB"``) a bare number in
    that unit for a table column whose header names it; None (not measured) -> ``"–"``."""
    if n is None:
        return "–"
    if unit is not None:
        return f"{n / 1024 ** _UNITS.index(unit):,.2f}"
    for name in _UNITS:
        if n < 1024 or name == _UNITS[-1]:
            return f"{n:.0f} {name}" if name == "B" else f"{n:.1f} {name}"
        n /= 1024
    raise AssertionError("unreachable")


def tensor_bytes(obj: object) -> int:
    """Bytes held by the tensors in ``obj``: a tensor, a (nested) dict / list / tuple of them (a state dict,
    an optimizer state) or a module (its parameters and buffers, tied weights once) -- what writing it
    needs on disk, roughly. Duck-typed so that this module does not import torch."""
    if hasattr(obj, "numel") and hasattr(obj, "element_size"):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if hasattr(obj, "parameters") and hasattr(obj, "buffers"):  # an nn.Module
        return sum(tensor_bytes(t) for t in (*obj.parameters(), *obj.buffers()))
    return 0


def check_free_space(where: Path, need: int, what: str) -> None:
    """One line before writing when the filesystem of ``where`` has clearly less than ``need`` bytes."""
    probe = Path(where)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if need > free:
        raise SleepifyError(
            f"not enough disk space for {what} in {where}: needs about {human_size(need)}, "
            f"{human_size(free)} free; free some space or choose another --out"
        )


def disk_full_message(
    err: BaseException, where: Path | None = None, need: int | None = None, hint: str | None = None
) -> str | None:
    """The one-line message for a full disk (ENOSPC / EDQUOT, torch's zip writer or safetensors failing on
    one), naming ``where`` (else the file the error names) and, when known, about how much is needed;
    else None."""
    text = str(err)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    markers = (
        "No space left on device",
        "Disk quota exceeded",
        "StorageFull",
        "enforce fail at inline_container",
    )
    full = full or any(m in text for m in markers)
    if not full:
        return None
    return _disk_full_line(where or getattr(err, "filename", None), need, hint)


def _disk_full_line(path: Path | str | None, need: int | None, hint: str | None) -> str:
    size = f" (needs about {human_size(need)})" if need else ""
    hint = hint or "free some space or choose another --out; nothing was replaced"
    return f"disk full while writing {path or 'the output'}{size}: {hint}"


@contextlib.contextmanager
def suppress_unless_disk_full(*kinds: type[BaseException]) -> Iterator[None]:
    """``contextlib.suppress(*kinds)`` for optional files (a tokenizer a model may lack), except that a full
    disk still stops the stage."""
    try:
        yield
    except kinds as err:
        if disk_full_message(err) is not None:
            raise


class DiskFullError(SleepifyError, OSError):
    """A full disk, as one line; ``need``: about how many bytes the write needed (None: unknown). Still an
    ``OSError`` (errno ENOSPC) for code that catches those."""

    def __init__(self, message: str, need: int | None = None):
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.need = need


@contextlib.contextmanager
def disk_full_names(
    where: Path, need: int | None = None, hint: str | None = None, *, outer: bool = False
) -> Iterator[None]:
    """Turn a full disk inside the block into one :class:`DiskFullError` line naming ``where`` (torch's
    zip writer and safetensors name no path of their own). ``outer``: a :class:`DiskFullError` from an
    inner block is re-worded for ``where`` (a run built in a temporary sibling names the output, and no
    checkpoint of the temporary folder survives to resume from)."""
    try:
        yield
    except DiskFullError as err:
        if not outer:
            raise
        raise DiskFullError(_disk_full_line(where, err.need, hint), err.need) from None
    except SleepifyError:
        raise
    except Exception as err:  # noqa: BLE001 - only a full disk is converted; anything else re-raised
        message = disk_full_message(err, where, need, hint)
        if message is None:
            raise
        raise DiskFullError(message, need) from None


class RunLock:
    """``.NAME.lock`` next to a run folder: holder PID and host. A second writer refuses in one line; a
    lock left by a dead process on this host is taken over with a message.

    Examples::

        >>> with RunLock(Path("runs/x/train")):
        ...     ...  # train, checkpoint, publish
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self.held = False

    def acquire(self) -> RunLock:
        check_output_path(self.folder)
        with output_errors(self.folder):
            return self._acquire()

    def _acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # being written this instant, or unreadable: look again
                    time.sleep(0.05)
                    holder = self._holder() or {}
                pid, host = int(holder.get("pid") or 0), holder.get("host")
                if host == me["host"] and (pid == me["pid"] or not pid_alive(pid)):
                    log.warning("taking over the lock %s left by process %s, which is no longer running",
                                self.path, pid)  # fmt: skip
                    self.path.unlink(missing_ok=True)
                    continue
                where = f"process {pid} on {host}" if host else "another process"
                same = host == me["host"]
                extra = ": wait for it or stop it" if same else f"; if it is dead, delete {self.path}"
                raise SleepifyError(f"{self.folder} is in use by {where}{extra}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise SleepifyError(f"cannot take the lock {self.path}: remove it if no run uses {self.folder}")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            holder = self._holder() or {}
            if holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
