"""The gated delta rule (Gated DeltaNet's token mixer) with fla's conventions, on CPU and GPU.

Layouts (time-major, as in fla): ``q, k`` ``[B, T, H, K]``; ``v`` ``[B, T, HV, V]`` with ``HV % H == 0``
(value head ``i`` reads q/k head ``i // (HV // H)``); ``g`` (natural-log decay, ``≤ 0``) and ``beta``
(post-sigmoid) ``[B, T, HV]``; states ``[B, HV, K, V]`` float32. Per value head, with ``S ∈ R^{K×V}``::

    S ← exp(g_t) S;   u = β_t (v_t − Sᵀ k_t);   S ← S + k_t uᵀ;   o_t = Sᵀ (scale · q_t)

Backends: ``"recurrent"`` (token by token, the reference), ``"chunk"`` (chunked torch, the CPU default),
``"fla_chunk"`` (fla Triton, CUDA, with backward), ``"fla_recurrent"`` (fla Triton, CUDA, inference only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sleepify.ops.gated_delta_rule.chunk import chunk_gated_delta_rule
from sleepify.ops.gated_delta_rule.naive import recurrent_gated_delta_rule
from sleepify.ops.registry import OPS, Call, resolve

__all__ = ["BACKENDS", "gated_delta_rule", "l2norm"]

BACKENDS = OPS["gated_delta_rule"].names  # ("auto", "recurrent", "chunk", "fla_chunk", "fla_recurrent")


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x · rsqrt(Σx² + eps)`` over the last dim, computed in (at least) fp32 and cast back.

    This is fla's ``use_qk_l2norm_in_kernel`` convention, not ``F.normalize`` (which clamps the norm).
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, K], got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, Dk = q.shape
    if v.dim() != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"v must be [B, T, HV, V] with B={B}, T={T}, got {tuple(v.shape)}")
    HV, Dv = v.shape[2], v.shape[3]
    if HV % H != 0:
        raise ValueError(
            f"the number of value heads ({HV}) must be a multiple of the number of q/k heads ({H})"
        )
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ValueError(f"{name} must be [B, T, HV] = {(B, T, HV)}, got {tuple(x.shape)}")
    if initial_state is not None and initial_state.shape != (B, HV, Dk, Dv):
        raise ValueError(
            f"initial_state must be [B, HV, K, V] = {(B, HV, Dk, Dv)}, got {tuple(initial_state.shape)}"
        )


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = True,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule over a sequence, optionally continuing from ``initial_state``.

    Args:
        q, k: ``[B, T, H, K]``.
        v: ``[B, T, HV, V]``, ``HV`` a multiple of ``H``.
        g: ``[B, T, HV]`` natural-log decay (``≤ 0``); the state is multiplied by ``exp(g_t)``.
        beta: ``[B, T, HV]`` post-sigmoid write strength.
        scale: multiplies q after the optional l2norm; default ``K ** -0.5``.
        initial_state: ``[B, HV, K, V]`` float32 state to start from (gradients flow into it).
        output_final_state: also return the ``[B, HV, K, V]`` float32 state after the last token.
        use_qk_l2norm: l2-normalise q and k (fla's ``use_qk_l2norm_in_kernel``, ``eps=1e-6``).
        backend: ``"auto"``, ``"recurrent"``, ``"chunk"``, ``"fla_chunk"`` or ``"fla_recurrent"``.
            ``auto`` picks ``fla_chunk`` on CUDA when grad is enabled or ``T > 64``, else
            ``fla_recurrent``; on CPU ``chunk`` (``recurrent`` for ``T == 1``). ``fla_recurrent`` has no
            backward (inference only); both fla backends need CUDA tensors (``fla_recurrent`` also runs
            on CPU under ``TRITON_INTERPRET=1``, for tests). The rules live in ``sleepify/ops/registry.py``
            (on CUDA without fla, or in float64, ``auto`` uses the torch backends).
        chunk_size: chunk length of the ``chunk`` backend (any positive int) and ``fla_chunk`` (16/32/64).

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, HV, V]`` in ``q.dtype``; ``final_state`` is ``None`` unless
        ``output_final_state``. The torch backends compute in float32 (float64 for float64 inputs, whose
        final state is then float64 too).
    """
    _check_shapes(q, k, v, g, beta, initial_state)
    name = resolve("gated_delta_rule", backend, Call.of(q, tokens=q.shape[1]))
    B, T, H, Dk = q.shape
    HV, Dv = v.shape[2], v.shape[3]
    if scale is None:
        scale = Dk**-0.5

    if name in ("fla_chunk", "fla_recurrent"):
        from sleepify.ops.gated_delta_rule.fla_backend import fla_chunk, fla_recurrent

        kwargs = dict(
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm=use_qk_l2norm,
        )
        if name == "fla_chunk":
            return fla_chunk(q, k, v, g, beta, chunk_size=chunk_size, **kwargs)
        return fla_recurrent(q, k, v, g, beta, **kwargs)

    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)
    if initial_state is None:
        state = torch.zeros(B, HV, Dk, Dv, dtype=dtype, device=q.device)
    else:
        state = initial_state.to(dtype)
    if T == 0:
        o = v.new_zeros(B, 0, HV, Dv, dtype=q.dtype)
        return o, (state if output_final_state else None)

    # prepare: compute dtype, optional l2norm, scale, GVA expansion, head-major layout [B, HV, T, D]
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    if HV != H:
        q = q.repeat_interleave(HV // H, dim=2)
        k = k.repeat_interleave(HV // H, dim=2)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    g, beta = g.transpose(1, 2), beta.transpose(1, 2)

    if name == "recurrent":
        o, state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
    else:
        o, state = chunk_gated_delta_rule(q, k, v, g, beta, state, chunk_size=chunk_size)
    o = o.transpose(1, 2).to(out_dtype)
    return o, (state if output_final_state else None)
