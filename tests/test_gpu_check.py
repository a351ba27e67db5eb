"""benchmarks/gpu_check.py without a GPU: the plan fits the budget, GPU steps skip with a note, carried
wheels are found."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("quick", [False, True])
def test_plan_lists_every_step_within_the_budget(gpu_check, quick: bool) -> None:
    proc = _run("--plan", *(["--quick"] if quick else []))
    assert proc.returncode == 0, proc.stderr
    steps = [s for s in gpu_check.STEPS if not s.alone and (not quick or s.quick_budget_s)]
    for s in steps:
        assert f"| {s.name} |" in proc.stdout
    total = sum(s.quick_budget_s if quick else s.budget_s for s in steps)
    assert f"total budget: {total} s" in proc.stdout
    assert total <= gpu_check.TOTAL_LIMIT_S  # the 8 minutes
    if quick:
        assert total <= 150  # --quick is about 2 minutes
    # killing a step at HARD_FACTOR x its budget cannot pass the suite's deadline unnoticed
    assert gpu_check.DEADLINE_S < 600  # one device call may run 600 s


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_steps_skip_with_a_note_on_cpu(tmp_path: Path, gpu_check) -> None:
    gpu_steps = [s.name for s in gpu_check.STEPS if s.gpu and not s.alone]
    proc = _run("--steps", ",".join(gpu_steps), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["step"] for r in report["steps"]] == gpu_steps
    assert all(r["status"] == "skipped" and "no CUDA" in r["note"] for r in report["steps"])
    assert report["ok"] and not report["cuda"]
    assert "no CUDA" in (tmp_path / "report.md").read_text()


def test_scale_runs_alone_with_its_own_budget(tmp_path: Path, gpu_check) -> None:
    """`--scale`: only the real-size chain (benchmarks/bench_scale.py), outside the 8-minute suite."""
    proc = _run("--plan", "--scale")
    assert proc.returncode == 0, proc.stderr
    (scale,) = [s for s in gpu_check.STEPS if s.alone]
    assert scale.name == "scale" and f"| {scale.name} |" in proc.stdout and "| doctor |" not in proc.stdout
    assert f"total budget: {scale.budget_s} s" in proc.stdout and scale.budget_s < gpu_check.DEADLINE_S
    if not torch.cuda.is_available():
        proc = _run("--scale", "--out", str(tmp_path))
        report = json.loads((tmp_path / "report.json").read_text())
        assert [(r["step"], r["status"]) for r in report["steps"]] == [("scale", "skipped")]


def test_carried_wheels_are_unpacked_and_importable(tmp_path: Path, monkeypatch, gpu_check) -> None:
    wheels = tmp_path / ".gpu-wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "carried_pkg_xyz-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("carried_pkg_xyz/__init__.py", "VALUE = 42\n")
    with zipfile.ZipFile(wheels / "other_pkg_xyz-1.0-cp27-cp27m-win32.whl", "w") as zf:  # wrong platform
        zf.writestr("other_pkg_xyz/__init__.py", "")
    with zipfile.ZipFile(wheels / "pytest-0.1-py3-none-any.whl", "w") as zf:  # older than the installed one
        zf.writestr("pytest/__init__.py", "")
    monkeypatch.setattr(gpu_check, "WHEELS", wheels)
    monkeypatch.setattr(gpu_check, "SITE", wheels / "site")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    assert gpu_check.use_wheels() == ["carried_pkg_xyz-1.0-py3-none-any.whl"]
    assert importlib.import_module("carried_pkg_xyz").VALUE == 42
    assert str(wheels / "site") in sys.path
    assert not (wheels / "site" / "pytest").exists()  # the machine's newer pytest is kept
    sys.modules.pop("carried_pkg_xyz", None)
