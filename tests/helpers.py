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
from sleepify.training.optim import newton_schulz_float32


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


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def float32_muon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torch.optim.Muon with sleepify's float32 Newton-Schulz on every matrix, in this process and in every
    Python subprocess it starts (torchrun ranks): a ``sitecustomize`` on ``PYTHONPATH`` applies the same
    patch there. The stock iteration casts to bfloat16, whose rounding depends on how DTensor splits the
    matmuls, so sharded and unsharded runs would differ by a fraction of an update."""
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", newton_schulz_float32)
    site = tmp_path / "float32-muon-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import torch.optim._muon as torch_muon\n"
        "from sleepify.training.optim import newton_schulz_float32\n"
        "torch_muon._zeropower_via_newtonschulz = newton_schulz_float32\n"
    )
    path = [str(site), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
