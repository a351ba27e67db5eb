"""Gated RMSNorm: torch reference vs a direct formula, gradcheck, and fla's fused kernel vs torch (under
TRITON_INTERPRET=1 on CPU with the autotune patch from tests/conftest.py, or on CUDA)."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from sleepify.ops.gated_rmsnorm import gated_rmsnorm
from tests.conftest import fla_interpreter_ok

FLA_OK = importlib.util.find_spec("fla") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)
requires_fla = pytest.mark.skipif(not FLA_OK, reason="needs fla and CUDA or TRITON_INTERPRET=1")


def direct_formula(x, gate, weight, eps, activation):
    """Element by element in float64 (independent of the implementation's vectorised form)."""
    x64, g64, w64 = x.double(), gate.double(), weight.double()
    rows = x64.reshape(-1, x64.shape[-1])
    grow = g64.reshape(-1, g64.shape[-1])
    out = torch.empty_like(rows)
    for i in range(rows.shape[0]):
        ms = sum(float(v) ** 2 for v in rows[i]) / rows.shape[1]
        inv = 1.0 / math.sqrt(ms + eps)
        for j in range(rows.shape[1]):
            g = float(grow[i, j])
            sig = 1.0 / (1.0 + math.exp(-g))
            act = sig if activation == "sigmoid" else g * sig
            out[i, j] = float(rows[i, j]) * inv * float(w64[j]) * act
    return out.reshape(x.shape)


@pytest.mark.parametrize("activation", ["silu", "swish", "sigmoid"])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_torch_matches_direct_formula(activation, eps):
    x, g, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(8)
    y = gated_rmsnorm(x, g, w, eps=eps, activation=activation, backend="torch")
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.double(), direct_formula(x, g, w, eps, activation), atol=1e-5, rtol=1e-5)


def test_bf16_in_bf16_out_computed_in_fp32():
    x, g, w = torch.randn(4, 16), torch.randn(4, 16), torch.randn(16)
    xb, gb = x.bfloat16(), g.bfloat16()
    y = gated_rmsnorm(xb, gb, w, backend="torch")
    assert y.dtype == torch.bfloat16
    ref = direct_formula(xb.float(), gb.float(), w, 1e-5, "silu")
    torch.testing.assert_close(y.double(), ref, atol=2e-2, rtol=1e-2)


def test_auto_on_cpu_is_torch():
    x, g, w = torch.randn(3, 8), torch.randn(3, 8), torch.randn(8)
    if torch.cuda.is_available():
        pytest.skip("auto picks fla on CUDA tensors only; here CPU tensors would still pick torch")
    assert torch.equal(gated_rmsnorm(x, g, w), gated_rmsnorm(x, g, w, backend="torch"))


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_gradcheck_float64(activation):
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, g, w: gated_rmsnorm(x, g, w, activation=activation, backend="torch"), (x, g, w)
    )


@requires_fla
@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
@fla_interpreter_ok
def test_fla_matches_torch(activation):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 3, 16, device=dev, requires_grad=True)
    g = torch.randn(2, 3, 16, device=dev, requires_grad=True)
    w = torch.randn(16, device=dev, requires_grad=True)
    dy = torch.randn(2, 3, 16, device=dev)
    outs = []
    for backend in ["torch", "fla"]:
        y = gated_rmsnorm(x, g, w, eps=1e-5, activation=activation, backend=backend)
        outs.append((y, *torch.autograd.grad((y * dy).sum(), [x, g, w])))
    for name, a, b in zip(["y", "dx", "dgate", "dweight"], *outs, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_errors():
    x, g, w = torch.randn(2, 8), torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        gated_rmsnorm(x, g, w, activation="gelu")
    with pytest.raises(ValueError, match="unknown backend 'flaa'.*did you mean 'fla'"):
        gated_rmsnorm(x, g, w, backend="flaa")
    with pytest.raises(ValueError, match="gate must have the shape of x"):
        gated_rmsnorm(x, g[:, :4], w)
    with pytest.raises(ValueError, match=r"weight must be \[8\]"):
        gated_rmsnorm(x, g, w[:4])
