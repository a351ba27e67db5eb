"""Helpers shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.optim._muon as torch_muon
from click.testing import CliRunner

from sleepify.cli.main import cli


def invoke(args: list[str]) -> str:
    """Run ``sleepify ARGS`` in-process; a non-zero exit fails the test with the command's output."""
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The CPU is shared: tiny ops are much slower with two contending OpenMP threads (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple, ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic iteration in float32. The stock one casts to bfloat16, whose rounding
    depends on how DTensor splits the matmuls, so sharded and unsharded runs differ by a fraction of an
    update; in float32 they agree to float32 rounding."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def float32_muon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torch.optim.Muon with :func:`newton_schulz_fp32`, in this process and in every Python subprocess it
    starts (torchrun ranks): a ``sitecustomize`` on ``PYTHONPATH`` applies the same patch there."""
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", newton_schulz_fp32)
    site = tmp_path / "float32-muon-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import torch.optim._muon as torch_muon\n"
        "from tests.helpers import newton_schulz_fp32\n"
        "torch_muon._zeropower_via_newtonschulz = newton_schulz_fp32\n"
    )
    path = [str(site), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
