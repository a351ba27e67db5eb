"""Muon: large CPU matrices orthogonalised in float32 on a CPU without bf16 units; torch's path elsewhere."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import _muon

from sleepify.training.optim import FLOAT32_NS_MIN_NUMEL, Muon, newton_schulz_float32

COEFFS = (3.4445, -4.775, 2.0315)


def test_float32_iteration_is_torchs_iteration_in_float32() -> None:
    g = torch.randn(96, 80, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz_float32(g, COEFFS, 5, 1e-7)
    torchs = _muon._zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7)
    assert ours.dtype == torch.float32 and torchs.dtype == torch.bfloat16 and ours.shape == g.shape
    # the same iteration: torch's bf16 result is ours to bf16 precision (relative error ~1e-2, not ~1)
    assert ((ours - torchs.float()).norm() / ours.norm()).item() < 0.03
    # the defining property of the quintic iteration: singular values pulled into roughly (0.5, 1.5)
    s = torch.linalg.svdvals(ours)
    assert s.min().item() > 0.3 and s.max().item() < 1.5
    # a tall matrix is transposed and back, as torch does
    torch.testing.assert_close(newton_schulz_float32(g.T, COEFFS, 5, 1e-7), ours.T)


def _step(float32_ns: bool, side: int) -> tuple[torch.Tensor, list[int]]:
    torch.manual_seed(0)
    layer = nn.Linear(side, side, bias=False)
    opt = Muon(layer.parameters(), lr=0.02, momentum=0.95, nesterov=True, float32_ns=float32_ns)
    layer.weight.grad = torch.randn_like(layer.weight)
    calls: list[int] = []
    original = _muon._zeropower_via_newtonschulz

    def spy(grad, *args):  # noqa: ANN001, ANN202
        calls.append(grad.numel())
        return original(grad, *args)

    _muon._zeropower_via_newtonschulz = spy
    try:
        opt.step()
    finally:
        _muon._zeropower_via_newtonschulz = original
    assert _muon._zeropower_via_newtonschulz is original  # the step put torch's function back
    return layer.weight.detach().clone(), calls


def test_large_matrices_take_the_float32_iteration_small_ones_torchs() -> None:
    side = int(FLOAT32_NS_MIN_NUMEL**0.5)
    big_f32, calls = _step(True, side)
    assert calls == []  # torch's bf16 iteration was not called for the large matrix
    big_bf16, calls = _step(False, side)
    assert calls == [side * side]
    assert not torch.equal(big_f32, big_bf16)
    torch.testing.assert_close(big_f32, big_bf16, rtol=0, atol=1e-3)  # the same update up to bf16 rounding
    small_f32, calls = _step(True, 16)
    assert calls == [256]  # below the threshold: torch's own path, bit for bit
    assert torch.equal(small_f32, _step(False, 16)[0])
