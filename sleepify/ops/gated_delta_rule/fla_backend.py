"""Thin wrappers over fla's Triton kernels. fla is imported lazily, only when one of these is called.

``chunk_gated_delta_rule`` (training / prefill; has a backward incl. ``dh0``) needs CUDA.
``fused_recurrent_gated_delta_rule`` (decode / short prefill; no backward) needs CUDA too, except under
the Triton interpreter (``TRITON_INTERPRET=1``) where it also runs on CPU tensors (slowly; tests only).
Both are always called with keyword arguments: the recurrent kernel's 5th positional parameter is ``gk``.
Device checks happen before these are reached (``sleepify/ops/registry.py``).
"""

from __future__ import annotations

from torch import Tensor


def fla_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None,
    output_final_state: bool,
    use_qk_l2norm: bool,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    extra = {} if chunk_size == 64 else {"chunk_size": chunk_size}
    return chunk_gated_delta_rule(
        q=q,
        k=k,
        v=v,
        g=g,
        beta=beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm,
        **extra,
    )


def fla_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None,
    output_final_state: bool,
    use_qk_l2norm: bool,
) -> tuple[Tensor, Tensor | None]:
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    return fused_recurrent_gated_delta_rule(
        q=q,
        k=k,
        v=v,
        g=g,
        beta=beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm,
    )
