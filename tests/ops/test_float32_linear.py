"""Float32Linear: half-precision weights, float32 products, against its definition (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sleepify.ops.float32_linear import Float32Linear, float32_linear, use_float32_products


def _reference(x, w, b):
    return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_the_definition(dtype: torch.dtype, bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(24, 16, generator=g) / 4).to(dtype).requires_grad_()
    b = torch.randn(24, generator=g).to(dtype).requires_grad_() if bias else None
    grad = torch.randn(2, 5, 24, generator=g).to(dtype)
    inputs = [t for t in (x, w, b) if t is not None]

    out = float32_linear(x, w, b)
    got = torch.autograd.grad(out, inputs, grad)
    ref = _reference(x, w, b)
    want = torch.autograd.grad(ref, inputs, grad)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same float32 product, rounded once
    for a, e in zip(got, want, strict=True):
        assert a.dtype == e.dtype == dtype
        torch.testing.assert_close(a, e)  # float32 sums in another order: within one rounding step


def test_keeps_no_float32_copies_for_backward() -> None:
    layer = nn.Linear(64, 128, dtype=torch.bfloat16)
    use_float32_products(layer, force=True)
    x = torch.randn(3, 64, dtype=torch.bfloat16, requires_grad=True)
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert kept and all(t.dtype == torch.bfloat16 for t in kept)
    assert any(t is layer.weight or t.data_ptr() == layer.weight.data_ptr() for t in kept)  # no copy
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16


def test_swaps_only_half_precision_linears_and_keeps_the_state_dict() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Embedding(10, 8), nn.Linear(8, 4)).to(torch.bfloat16)
    model.append(nn.Linear(4, 4))  # float32: left as it is
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_float32_products(model, force=False) == 0
    assert use_float32_products(model, force=True) == 2
    assert [type(m).__name__ for m in model] == ["Float32Linear", "Embedding", "Float32Linear", "Linear"]
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(model[0](x), _reference(x, model[0].weight, model[0].bias), rtol=0, atol=0)


def test_float32_weights_compute_as_nn_linear() -> None:
    layer = Float32Linear(6, 3)
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
