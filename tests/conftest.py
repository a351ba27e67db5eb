"""Test setup shared by every test.

Triton kernels run on CPU only under the interpreter, and ``@triton.jit`` reads TRITON_INTERPRET when
a kernel module is *imported*, so it is set here, before any test module imports sleepify's kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def _patch_triton_autotune_for_interpreter() -> None:
    """Multi-config ``@triton.autotune`` benchmarks through a GPU driver; under the interpreter
    there is none, so take the first config (timing is meaningless there anyway)."""
    try:
        import triton.runtime.autotuner as autotuner
    except ImportError:
        return

    def _interp_bench(self):  # noqa: ANN001
        def bench(kernel_call, quantiles=None):  # noqa: ANN001
            kernel_call()
            return [1.0, 1.0, 1.0] if quantiles else 1.0

        return bench

    autotuner.Autotuner.do_bench = property(_interp_bench)


if not torch.cuda.is_available():
    _patch_triton_autotune_for_interpreter()

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _triton_version() -> tuple[int, ...]:
    try:
        import triton
    except ImportError:
        return (0,)
    return tuple(int(x) for x in triton.__version__.split(".")[:2] if x.isdigit())


# fla's kernels fail inside the Triton interpreter of triton 3.5.1 / 3.6.0 (torch 2.9-2.11 pin those):
# "only 0-dimensional arrays can be converted to Python scalars", autotuner "'function' object has no
# attribute 'fn'". 3.7.1 and newer pass. On a GPU the kernels are compiled, not interpreted.
fla_interpreter_ok = pytest.mark.skipif(
    not torch.cuda.is_available() and _triton_version() < (3, 7),
    reason="fla's kernels under the Triton interpreter need triton >= 3.7 (3.5.1 and 3.6.0 fail there)",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests whose skip condition names CUDA carry the ``cuda`` marker, so ``pytest -m cuda`` selects every
    test that exercises a GPU path (benchmarks/gpu_check.py runs exactly those on a GPU machine)."""
    for item in items:
        if any("CUDA" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES
