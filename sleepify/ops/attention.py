"""Window attention: softmax attention of a window's queries over the keys it may see.

The sleep engine (``sleepify/sleep.py``) describes what an attention block may attend to with absolute
column indices rather than a mask: query ``i`` (absolute index ``q_index[i]``) sees key ``j`` iff

    k_index[j] <= q_index[i]                       (causal)
    and k_valid[b, j]                              (the key is a real token, not padding)
    and q_index[i] - k_index[j] < span             (sliding window / sliding eviction; None = no limit)

or ``k_index[j] == q_index[i]``: a padded query sees at least itself, so no softmax row is empty (its
output is never used). This is exactly ``WindowContext.attention_mask``.

Shapes: ``q [B, Hq, Tq, D]``, ``k``/``v`` ``[B, Hkv, K, D]`` with ``Hq % Hkv == 0`` (GQA: query head ``h``
reads key head ``h // (Hq // Hkv)``); ``q_index [Tq]``, ``k_index [K]`` long; ``k_valid [B, K]`` bool or
None (every key real). Returns ``[B, Hq, Tq, D]`` in ``q.dtype``.

Backends (``backend=``):

- ``"torch"``: the reference (fp32 masked softmax, autograd through everything).
- ``"sdpa"``: ``F.scaled_dot_product_attention`` with a boolean mask (no mask / ``is_causal`` when the
  window allows it). The CPU default.
- ``"flash"``: flash-attn 2 (CUDA, fp16/bf16): ``flash_attn_func`` for a window forward (``Tq == K``) and
  whenever gradients are needed; ``flash_attn_with_kvcache`` for queries after cached keys without
  gradients (decode steps: the K/V are read in place from the caller's preallocated buffer, up to
  ``cache_seqlens``). Bottom-right causal with ``window_size = (span - 1, 0)``.
- ``"fla"``: fla's Triton kernels: ``parallel_attn`` (``Tq == K``, has a backward) and
  ``attn_decoding_one_step`` (``Tq == 1``, inference). CUDA, or CPU under ``TRITON_INTERPRET=1``.
- ``"auto"``: flash on CUDA fp16/bf16 tensors when flash-attn is importable, SDPA otherwise.

flash and fla can only express "keys are contiguous columns ending at the last query, all real": the
window is *aligned* (``aligned=True`` is the caller's promise; None = checked here) and ``k_valid`` is
None or all True. Anything else (left padding in the window, a gap in the keys) falls back to SDPA, as
does a call those kernels cannot do (fla decode with gradients, ``Tq`` neither 1 nor ``K``, dropout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sleepify.ops.registry import OPS, Call, module_available, resolve

__all__ = ["BACKENDS", "allowed_keys", "flash_attn_available", "window_attention", "window_attention_torch"]

BACKENDS = OPS["window_attention"].names  # ("auto", "torch", "sdpa", "flash", "fla")


def flash_attn_available() -> bool:
    """Whether ``flash_attn`` imports (it needs its compiled CUDA extension; never on a CPU-only machine)."""
    return module_available("flash_attn")


def allowed_keys(q_index: Tensor, k_index: Tensor, k_valid: Tensor | None, span: int | None) -> Tensor:
    """The boolean mask ``[B or 1, Tq, K]`` (True = attend) of the module docstring."""
    q = q_index[:, None]
    k = k_index[None, :]
    allowed = (k <= q)[None]
    if span is not None:
        allowed = allowed & ((q - k) < span)[None]
    if k_valid is not None:
        allowed = allowed & k_valid[:, None, :]
    return allowed | (k == q)[None]  # a padded query sees at least itself


def window_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_index: Tensor,
    k_index: Tensor,
    k_valid: Tensor | None = None,
    span: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """The reference: explicit fp32 masked softmax. ``softcap`` caps the scores at ``±softcap`` with
    ``softcap·tanh(s / softcap)`` before the mask (Gemma 2's attention logit soft-capping; only this path
    has it)."""
    groups = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(groups, dim=1)
    vf = v.float().repeat_interleave(groups, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = allowed_keys(q_index, k_index, k_valid, span)[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, vf).to(q.dtype)


def _is_aligned(q_index: Tensor, k_index: Tensor) -> bool:
    """Keys are consecutive columns and the queries are the last ``Tq`` of them (bottom-right causal)."""
    Tq, K = q_index.shape[0], k_index.shape[0]
    if Tq > K:
        return False
    ref = torch.arange(K, device=k_index.device) + k_index[0]
    return bool(torch.equal(k_index, ref) and torch.equal(q_index, ref[K - Tq :]))


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_index: Tensor,
    k_index: Tensor,
    k_valid: Tensor | None = None,
    span: int | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    aligned: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    """Attention of ``q`` over ``k``/``v`` restricted as in the module docstring. ``[B, Hq, Tq, D]``.

    ``aligned``: True promises that ``k_index`` is consecutive and ends at ``q_index[-1]`` with the queries
    its last ``Tq`` entries (what the sleep engine always passes); None checks it (one host sync on GPU).
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"window_attention: q must be [B, Hq, Tq, D] and k, v [B, Hkv, K, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, Hq, Tq, _ = q.shape
    Hkv, K = k.shape[1], k.shape[2]
    if k.shape[0] != B or Hq % Hkv:
        raise ValueError(
            f"window_attention: batch / GQA heads do not match: q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if q_index.shape != (Tq,) or k_index.shape != (K,):
        raise ValueError(
            f"window_attention: q_index must be [{Tq}] and k_index [{K}], got {tuple(q_index.shape)} and "
            f"{tuple(k_index.shape)}"
        )
    if k_valid is not None and tuple(k_valid.shape) != (B, K):
        raise ValueError(f"window_attention: k_valid must be [{B}, {K}], got {tuple(k_valid.shape)}")
    if span is not None and span < 1:
        raise ValueError(f"window_attention: span must be >= 1 or None, got {span}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    backend = resolve("window_attention", backend, Call.of(q, tokens=Tq))
    if backend == "torch":
        return window_attention_torch(q, k, v, q_index, k_index, k_valid, span, scale, dropout_p)

    if backend in ("flash", "fla"):
        # these kernels express only an aligned, padding-free window; check the cheap conditions first
        if aligned is None:
            aligned = _is_aligned(q_index, k_index)
        if aligned and k_valid is not None and bool(k_valid.all()):
            k_valid = None
        if aligned and k_valid is None:
            out = _fast(backend, q, k, v, span, scale, dropout_p)
            if out is not None:
                return out
    return _sdpa(q, k, v, q_index, k_index, k_valid, span, scale, dropout_p, aligned)


def _sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_index: Tensor,
    k_index: Tensor,
    k_valid: Tensor | None,
    span: int | None,
    scale: float,
    dropout_p: float,
    aligned: bool | None,
) -> Tensor:
    Tq, K = q.shape[2], k.shape[2]
    mask: Tensor | None = None
    is_causal = False
    if aligned and k_valid is None and (span is None or span >= K):
        # no padding and no span cut: a decode step sees every key; a prefill is plain causal
        if Tq == K:
            is_causal = Tq > 1
        elif Tq > 1:
            mask = allowed_keys(q_index, k_index, None, None)[:, None]
    else:
        mask = allowed_keys(q_index, k_index, k_valid, span)[:, None]
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


def _fast(
    backend: str, q: Tensor, k: Tensor, v: Tensor, span: int | None, scale: float, dropout_p: float
) -> Tensor | None:
    """flash-attn / fla on an aligned, padding-free window; None = this call is not theirs (use SDPA)."""
    B, Hq, Tq, D = q.shape
    K = k.shape[2]
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    # [B, H, T, D] -> [B, T, H, D] views (last dim contiguous: what both libraries read)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "flash":
        from flash_attn import flash_attn_func, flash_attn_with_kvcache

        window = (span - 1, 0) if span is not None else (-1, -1)
        if grad or dropout_p > 0 or Tq == K:  # a window forward (prefill, sleep pass, training)
            out = flash_attn_func(
                qt, kt, vt, dropout_p=dropout_p, softmax_scale=scale, causal=True, window_size=window
            )
        else:
            # k/v: the caller's (preallocated) cache, read in place up to cache_seqlens; bottom-right causal
            lens = torch.full((B,), K, dtype=torch.int32, device=q.device)
            out = flash_attn_with_kvcache(
                qt, kt, vt, cache_seqlens=lens, softmax_scale=scale, causal=True, window_size=window
            )
        return out.transpose(1, 2)
    if dropout_p > 0:
        return None
    if Tq == K:
        from fla.ops.attn import parallel_attn

        return parallel_attn(qt, kt, vt, scale=scale, window_size=span).transpose(1, 2)
    if Tq == 1 and not grad:
        from fla.ops.attn.decoding import attn_decoding_one_step

        Hkv = k.shape[1]
        cu = torch.arange(0, (B + 1) * K, K, dtype=torch.long, device=q.device)
        out = attn_decoding_one_step(
            qt.reshape(1, B, Hq, D),
            kt.reshape(1, B * K, Hkv, D),
            vt.reshape(1, B * K, Hkv, v.shape[-1]),
            scale=scale,
            cu_seqlens=cu,
            window_size=span,
        )
        return out.reshape(B, 1, Hq, -1).transpose(1, 2)
    return None
