"""Window attention (sleepify/ops/attention.py): every path against the torch reference, outputs and
gradients; the reference against a per-element statement of the rule (the engine's WindowContext mask)."""

from __future__ import annotations

import os

import pytest
import torch

from sleepify.ops.attention import (
    allowed_keys,
    flash_attn_available,
    window_attention,
    window_attention_torch,
)
from sleepify.sleep import WindowContext
from tests.conftest import fla_interpreter_ok

# (B, Hq, Hkv, D, Tq, kept keys before the window's columns, span, padded?)
CASES = {
    "prefill": (2, 4, 2, 8, 7, 0, None, False),
    "prefill-span": (2, 4, 4, 8, 9, 0, 4, False),
    "kept-keys-sliding": (2, 4, 2, 8, 5, 7, 8, False),
    "decode": (3, 4, 1, 8, 1, 6, None, False),
    "decode-span": (2, 4, 2, 8, 1, 9, 5, False),
    "padded": (2, 4, 2, 8, 6, 3, 6, True),
    "padded-decode": (2, 2, 2, 8, 1, 5, None, True),
}


def make(case: str, dtype: torch.dtype = torch.float32, device: str = "cpu", offset: int = 11):
    B, Hq, Hkv, D, Tq, kept, span, padded = CASES[case]
    K = kept + Tq
    g = torch.Generator().manual_seed(len(case))
    q = torch.randn(B, Hq, Tq, D, generator=g).to(device, dtype)
    k = torch.randn(B, Hkv, K, D, generator=g).to(device, dtype)
    v = torch.randn(B, Hkv, K, D, generator=g).to(device, dtype)
    q_index = torch.arange(offset + kept, offset + K, device=device)
    k_index = torch.arange(offset, offset + K, device=device)
    k_valid = None
    if padded:  # left padding: row 1's first three columns are not real
        k_valid = torch.ones(B, K, dtype=torch.bool, device=device)
        k_valid[1, :3] = False
    return q, k, v, q_index, k_index, k_valid, span


def test_rule_element_by_element() -> None:
    """allowed_keys = the engine's additive mask (WindowContext.attention_mask) = the docstring's rule."""
    q_index, k_index = torch.arange(10, 14), torch.arange(5, 14)
    k_valid = torch.ones(2, 9, dtype=torch.bool)
    k_valid[1, :6] = False  # row 1: keys 5..10 are padding, so its query 10 sees only itself
    for span in (None, 3):
        got = allowed_keys(q_index, k_index, k_valid, span)
        for b in range(2):
            for i, qi in enumerate(q_index.tolist()):
                for j, kj in enumerate(k_index.tolist()):
                    ok = kj <= qi and bool(k_valid[b, j]) and (span is None or qi - kj < span)
                    assert bool(got[b, i, j]) == (ok or kj == qi)
        ctx = WindowContext(None, None, None, q_index, k_index, k_valid, span, torch.float32)
        assert torch.equal(ctx.attention_mask()[:, 0] == 0, got)


def test_reference_matches_eager_formula() -> None:
    q, k, v, qi, ki, kv, span = make("padded")
    groups = q.shape[1] // k.shape[1]
    mask = allowed_keys(qi, ki, kv, span)[:, None]
    scores = q @ k.repeat_interleave(groups, 1).transpose(-1, -2) / q.shape[-1] ** 0.5
    want = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.repeat_interleave(groups, 1)
    torch.testing.assert_close(window_attention_torch(q, k, v, qi, ki, kv, span), want)


def _check(backend: str, case: str, grads: bool, atol: float = 1e-5, **kw) -> None:
    q, k, v, qi, ki, kv, span = make(case, **kw)
    ref_in = [t.detach().clone().float().requires_grad_(grads) for t in (q, k, v)]
    got_in = [t.detach().clone().requires_grad_(grads) for t in (q, k, v)]
    ref = window_attention(*ref_in, qi, ki, kv, span, backend="torch")
    got = window_attention(*got_in, qi, ki, kv, span, backend=backend)
    assert got.shape == ref.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.float(), ref, atol=atol, rtol=atol)
    if grads:
        w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(got.device)
        (ref * w).sum().backward()
        (got.float() * w).sum().backward()
        for a, b in zip(got_in, ref_in, strict=True):
            torch.testing.assert_close(a.grad.float(), b.grad, atol=atol * 10, rtol=atol * 10)


@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_matches_reference(case: str) -> None:
    _check("sdpa", case, grads=True)
    _check("auto", case, grads=False)  # auto is SDPA on CPU


def test_sdpa_detects_alignment_itself() -> None:
    """aligned=None (checked) and a non-aligned key set (a gap) give the reference."""
    q, k, v, qi, ki, kv, span = make("kept-keys-sliding")
    gap = ki.clone()
    gap[:3] -= 4  # keys that are not consecutive columns
    for backend in ("sdpa", *(("fla",) if os.environ.get("TRITON_INTERPRET") == "1" else ())):
        got = window_attention(q, k, v, qi, gap, kv, span, backend=backend)
        torch.testing.assert_close(
            got, window_attention_torch(q, k, v, qi, gap, kv, span), atol=1e-5, rtol=1e-5
        )


def test_errors() -> None:
    q, k, v, qi, ki, kv, span = make("prefill")
    with pytest.raises(ValueError, match="did you mean 'sdpa'"):
        window_attention(q, k, v, qi, ki, backend="spda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            window_attention(q, k, v, qi, ki, backend="flash")
    with pytest.raises(ValueError, match="k_index"):
        window_attention(q, k, v, qi, ki[1:], backend="sdpa")


def test_fla_needs_cuda_or_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, qi, ki, kv, span = make("prefill")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        window_attention(q, k, v, qi, ki, backend="fla")


needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="fla's Triton kernels need CUDA or TRITON_INTERPRET=1",
)


@needs_triton
@fla_interpreter_ok
@pytest.mark.parametrize("case", ["prefill", "prefill-span", "decode-span", "padded"])
def test_fla_matches_reference(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """parallel_attn (prefill, with its backward), attn_decoding_one_step (decode), SDPA fallback (padding);
    on CPU under the Triton interpreter (tiny shapes: it is slow)."""
    import fla.ops.attn
    import fla.ops.attn.decoding

    calls: list[str] = []
    for mod, name in ((fla.ops.attn, "parallel_attn"), (fla.ops.attn.decoding, "attn_decoding_one_step")):
        fn = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, fn=fn, name=name, **k: calls.append(name) or fn(*a, **k))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _check("fla", case, grads=case != "decode-span", device=device)
    want = {
        "prefill": "parallel_attn",
        "prefill-span": "parallel_attn",
        "decode-span": "attn_decoding_one_step",
    }
    assert calls == ([want[case]] if case in want else [])  # padded: SDPA


needs_flash = pytest.mark.skipif(
    not (torch.cuda.is_available() and flash_attn_available()), reason="needs CUDA and flash-attn"
)


@needs_flash
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_flash_matches_reference(case: str, dtype: torch.dtype) -> None:
    """flash_attn_func with gradients, flash_attn_with_kvcache without; padded windows fall back to SDPA."""
    _check("flash", case, grads=True, atol=2e-2, dtype=dtype, device="cuda")
    with torch.no_grad():
        _check("flash", case, grads=False, atol=2e-2, dtype=dtype, device="cuda")
    _check("auto", case, grads=False, atol=2e-2, dtype=dtype, device="cuda")
