"""Gated RMSNorm: ``y = x * rsqrt(mean(x^2, -1) + eps) * weight * act(gate)``.

Normalises over the last dim, computed in float32 (float64 stays float64), returned in ``x.dtype``.
``act`` is SiLU (``"silu"`` / ``"swish"``: ``g * sigmoid(g)``) or ``"sigmoid"``.

Backends: ``"torch"`` (reference), ``"fla"`` (fla's fused Triton kernel
``fla.modules.norm.fused_norm_gate.rms_norm_gated``, the function behind ``FusedRMSNormGated.forward``;
imported lazily), ``"auto"`` (fla on CUDA tensors, torch otherwise).
"""

from __future__ import annotations

import torch

from sleepify.errors import did_you_mean
from sleepify.ops.registry import OPS, Call, resolve

__all__ = ["gated_rmsnorm", "gated_rmsnorm_torch"]

BACKENDS = OPS["gated_rmsnorm"].names  # ("auto", "torch", "fla")
ACTIVATIONS = ("silu", "swish", "sigmoid")


def gated_rmsnorm_torch(
    x: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float = 1e-5,
    activation: str = "silu",
) -> torch.Tensor:
    """Pure-torch reference (float32 compute, float64 kept for gradcheck; output in ``x.dtype``)."""
    cdt = torch.promote_types(torch.promote_types(x.dtype, gate.dtype), torch.float32)
    xf = x.to(cdt)
    gf = gate.to(cdt)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(cdt)
    y = y * (torch.sigmoid(gf) if activation == "sigmoid" else gf * torch.sigmoid(gf))
    return y.to(x.dtype)


def gated_rmsnorm(
    x: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    eps: float = 1e-5,
    activation: str = "silu",
    backend: str = "auto",
) -> torch.Tensor:
    """``x * rsqrt(mean(x^2, -1) + eps) * weight * act(gate)``.

    ``x`` and ``gate`` are ``[..., D]``, ``weight`` is ``[D]`` (or None); the result has ``x.dtype``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"gated_rmsnorm: unknown activation {activation!r}; choose one of {ACTIVATIONS}"
            f"{did_you_mean(str(activation), ACTIVATIONS)}"
        )
    if backend != "auto":
        OPS["gated_rmsnorm"].backend(backend)  # an unknown name fails before the shape checks
    if x.dim() < 1 or gate.shape != x.shape:
        raise ValueError(
            f"gated_rmsnorm: gate must have the shape of x, got x {tuple(x.shape)} "
            f"and gate {tuple(gate.shape)}"
        )
    D = x.shape[-1]
    if weight is not None and tuple(weight.shape) != (D,):
        raise ValueError(
            f"gated_rmsnorm: weight must be [{D}] (the last dim of x), got {tuple(weight.shape)}"
        )
    backend = resolve("gated_rmsnorm", backend, Call.of(x))
    if backend == "torch":
        return gated_rmsnorm_torch(x, gate, weight, eps, activation)
    from fla.modules.norm.fused_norm_gate import rms_norm_gated

    return rms_norm_gated(
        x=x, g=gate, weight=weight, bias=None, activation=activation, residual=None, prenorm=False, eps=eps
    )
