"""A small workspace shared by the reliability tests: a dataset, a converted built-in model, a finished
warm-up run and deliberately broken copies of the model folder. Built once, in-process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sleepify.cli.main import main

MODEL = "builtin:gdn-hybrid-4-tiny"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
CLI = [sys.executable, "-m", "sleepify", "-q"]


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (and Python then installs no KeyboardInterrupt handler): give it
    # the default, as a shell does for a foreground command, whatever an earlier test did to this process.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(argv: list[str], cwd: Path, env: dict[str, str] = ENV) -> subprocess.Popen:
    """``sleepify -q ARGV`` in a child process (to be killed or signalled)."""
    return subprocess.Popen([*CLI, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)  # fmt: skip


def temps(folder: Path) -> list[Path]:
    """Hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` folders in ``folder`` (what a killed run leaves)."""
    return [
        p for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)
    ]


def stage_argv(what: str, workspace: Path, out: Path) -> list[str]:
    """A ``convert`` / ``export`` / ``data`` command that replaces ``out`` (a few seconds of work)."""
    return {
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


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    pytest.fail("the process neither ended nor reached the point to kill it at")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``sleepify ARGV`` in this process: (exit code, stdout, stderr). The SIGTERM handler main() installs
    is put back afterwards."""
    handler = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    finally:
        signal.signal(signal.SIGTERM, handler)
    out, err = capsys.readouterr()
    return code, out, err


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> sha256 of its bytes; symlinks -> their target."""
    digest = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if "__pycache__" in rel:
            continue
        if path.is_symlink():
            digest[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[rel] = "dir"
    return digest


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/rule110``, ``runs/tiny/convert`` (a model), ``runs/tiny/warmup`` (a finished 2-step run,
    runs/latest points at its model) and broken models under ``bad/``."""
    root = tmp_path_factory.mktemp("reliability")
    cwd = Path.cwd()
    os.chdir(root)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        for argv in (
            ["-q", "data", "rule110", "--out", "data/rule110", "--t", "0", "--n-train", "32", "--n-test", "4"],  # noqa: E501
            ["-q", "data", "rule110", "--out", "data/empty", "--t", "0", "--n-train", "0", "--n-test", "4"],
            ["-q", "convert", MODEL, "--out", "runs/tiny/convert"],
            ["-q", "warmup", "runs/tiny/convert", "--data", "data/rule110", "--steps", "2", "--N", "1",
             "--out", "runs/tiny/warmup", "train.checkpoint_every=1", "train.batch_size=2"],
            ["-q", "export", "runs/tiny/warmup", "--out", "exported"],
        ):  # fmt: skip
            try:
                main(argv)
            except SystemExit as err:
                assert not err.code, (argv, err.code)
    finally:
        signal.signal(signal.SIGTERM, handler)
        os.chdir(cwd)
    model = root / "runs/tiny/convert"
    bad = root / "bad"
    weights = (model / "model.safetensors").read_bytes()
    for name, mutate in {
        "truncated": lambda d: (d / "model.safetensors").write_bytes(weights[: len(weights) // 2]),
        "random": lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
        "empty-weights": lambda d: (d / "model.safetensors").write_bytes(b""),
        "mismatch": lambda d: _bigger_config(d),
        "pickle": lambda d: _pickle_only(d),
        "no-weights": lambda d: (d / "model.safetensors").unlink(),
        "bad-json": lambda d: (d / "config.json").write_text("{not json"),
        "not-sleep": lambda d: _retype(d, "llama"),
        "unknown-arch": lambda d: _retype(d, "no_such_arch"),
        "nan": _nan_weights,
    }.items():
        shutil.copytree(model, bad / name)
        mutate(bad / name)
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("no config here\n")
    (root / "empty.jsonl").write_text("")
    (root / "wrong-columns.jsonl").write_text('{"foo": 1}\n{"foo": 2}\n')
    (root / "latin1.txt").write_bytes("caf\xe9 0110".encode("latin-1"))
    (root / "a-file").write_text("x\n")
    _broken_inputs(root)
    return root


def alias_bomb(levels: int = 9, width: int = 9, key: str = "train:\n  trainable:") -> str:
    """A recipe whose YAML aliases expand to width**levels values under ``key`` (a list-valued key)."""
    lines = [key, "    - &a0 [" + ", ".join(['"x"'] * width) + "]"]
    lines += [f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _broken_inputs(root: Path) -> None:
    """Recipes, data files, prompt files and checkpoints that a stage must refuse in one line."""
    (root / "recipes").mkdir()
    (root / "recipes/bomb.yaml").write_text(alias_bomb())
    (root / "recipes/binary.yaml").write_bytes(b"\x00\x01\x02\xffsleep:\n  passes: 2\n")
    (root / "recipes/latin1.yaml").write_bytes("description: caf\xe9\n".encode("latin-1"))
    (root / "recipes/inf-lr.yaml").write_text("train:\n  optimizer:\n    adamw_lr: .inf\n")
    (root / "int-text.jsonl").write_text("".join(json.dumps({"text": i}) + "\n" for i in range(8)))
    lines = [json.dumps({"text": f"row {i}"}) for i in range(8)]
    lines[4] = '{"text": "unterminated'
    (root / "bad-line.jsonl").write_text("\n".join(lines) + "\n")
    (root / "empty-prompt.txt").write_text("")
    (root / "str-tokens.jsonl").write_text('{"input_ids": "12", "loss_mask": "01"}\n' * 4)
    run = root / "runs/tiny/warmup"
    for kind, damage in {
        "empty": lambda f: f.write_bytes(b""),
        "truncated": lambda f: f.write_bytes(f.read_bytes()[:100]),
        "pickle": lambda f: _pickle_payload(f),
    }.items():
        copy = root / f"runs/opt-{kind}/warmup"
        shutil.copytree(run, copy)
        for ckpt in (copy / "checkpoints").iterdir():
            damage(ckpt / "optimizer.pt")


def _pickle_payload(file: Path) -> None:
    import argparse

    import torch

    torch.save({"state": argparse.Namespace(a=1)}, file)  # weights_only refuses the class


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _bigger_config(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("hidden_size", "n_embd", "d_model"):
        if key in cfg:
            cfg[key] = int(cfg[key]) * 2
    base = cfg.get("base_config")
    if isinstance(base, dict) and "hidden_size" in base:
        base["hidden_size"] = int(base["hidden_size"]) * 2
    (folder / "config.json").write_text(json.dumps(cfg))


def _pickle_only(folder: Path) -> None:
    import argparse

    import torch

    (folder / "model.safetensors").unlink()
    torch.save({"x": argparse.Namespace(a=1)}, folder / "pytorch_model.bin")  # weights_only refuses it


def _retype(folder: Path, model_type: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workspace)
    return workspace


PY = sys.executable
