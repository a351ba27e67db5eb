"""Helpers shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
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
