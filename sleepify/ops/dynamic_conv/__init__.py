"""Dynamic causal convolution (Jet-Nemotron's ``DynamicShortConvolution`` op).

``y[b,t,d] = act( sum_{w<W} x[b, t-W+1+w, d] * kernels[b,t,d,w] )``: a per-token, per-channel kernel of
width ``W`` (``kernels[..., W-1]`` multiplies the current token), causal, no bias, SiLU or no activation.

Conv state ``[B, D, W]``: the last ``W`` raw (pre-conv) inputs, channels-first / time-last, zero left-padded
when fewer than ``W`` tokens were seen (fla's ``ShortConvolution`` cache convention). With an initial
state, its ``W-1`` most recent entries precede ``x``.

Backends: ``"torch"`` (reference, autograd through everything), ``"triton"`` (our kernels; the sequence
path has a Triton backward; on CPU only under ``TRITON_INTERPRET=1``), ``"auto"`` (triton on CUDA tensors,
torch otherwise). Everything is computed in float32.
"""

from __future__ import annotations

import torch

from sleepify.errors import did_you_mean
from sleepify.ops.dynamic_conv.naive import dynamic_conv_step_torch, dynamic_conv_torch
from sleepify.ops.registry import OPS, Call, resolve

__all__ = ["dynamic_conv", "dynamic_conv_step", "dynamic_conv_torch", "dynamic_conv_step_torch"]

BACKENDS = OPS["dynamic_conv"].names  # ("auto", "torch", "triton")
ACTIVATIONS = ("silu", "swish", None)


def _check_activation(activation: str | None) -> str | None:
    if activation not in ACTIVATIONS:
        hint = did_you_mean(str(activation), ["silu", "swish"])
        raise ValueError(f"dynamic_conv: unknown activation {activation!r}; use 'silu' or None{hint}")
    return None if activation is None else "silu"


def _check_same_device(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"dynamic_conv: {name} is on {t.device} but x is on {x.device}")


def dynamic_conv(
    x: torch.Tensor,
    kernels: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = "silu",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequence forward. ``x [B,T,D]``, ``kernels [B,T,D,W]``, ``initial_state [B,D,W]`` or None.

    Returns ``(y [B,T,D] in x.dtype, final_state [B,D,W] in x.dtype if output_final_state else None)``.
    """
    act = _check_activation(activation)
    if x.dim() != 3:
        raise ValueError(f"dynamic_conv: x must be [B, T, D], got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if kernels.dim() != 4 or tuple(kernels.shape[:3]) != (B, T, D) or kernels.shape[3] < 1:
        raise ValueError(
            f"dynamic_conv: kernels must be [B, T, D, W] = [{B}, {T}, {D}, W>=1] to match x, "
            f"got shape {tuple(kernels.shape)}"
        )
    if T == 0:
        raise ValueError("dynamic_conv: x has an empty sequence (T == 0)")
    W = kernels.shape[3]
    if initial_state is not None:
        if tuple(initial_state.shape) != (B, D, W):
            raise ValueError(
                f"dynamic_conv: initial_state must be [B, D, W] = [{B}, {D}, {W}], "
                f"got shape {tuple(initial_state.shape)}"
            )
        _check_same_device("initial_state", initial_state, x)
    _check_same_device("kernels", kernels, x)
    backend = resolve("dynamic_conv", backend, Call.of(x, tokens=T))
    if backend == "torch":
        return dynamic_conv_torch(x, kernels, initial_state, output_final_state, act)
    from sleepify.ops.dynamic_conv.triton_kernels import DynamicConvTritonFunction

    h0 = initial_state.contiguous() if initial_state is not None else None
    y, final_state = DynamicConvTritonFunction.apply(
        x.contiguous(), kernels.contiguous(), h0, output_final_state, act == "silu"
    )
    return y, final_state


def dynamic_conv_step(
    x: torch.Tensor,
    kernels: torch.Tensor,
    state: torch.Tensor,
    *,
    activation: str | None = "silu",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token. ``x [B,D]``, ``kernels [B,D,W]`` (this token's kernel), ``state [B,D,W]``.

    Returns ``(y [B,D] in x.dtype, new_state [B,D,W] in state.dtype)`` where ``new_state`` is ``state``
    rolled left by one with ``x`` written at slot ``W-1``. Functional: ``state`` is not modified.
    The triton backend has no backward (decoding only); use ``backend='torch'`` for gradients.
    """
    act = _check_activation(activation)
    if x.dim() != 2:
        raise ValueError(f"dynamic_conv_step: x must be [B, D], got shape {tuple(x.shape)}")
    B, D = x.shape
    if kernels.dim() != 3 or tuple(kernels.shape[:2]) != (B, D) or kernels.shape[2] < 1:
        raise ValueError(
            f"dynamic_conv_step: kernels must be [B, D, W] = [{B}, {D}, W>=1] to match x, "
            f"got shape {tuple(kernels.shape)}"
        )
    W = kernels.shape[2]
    if state.dim() != 3 or tuple(state.shape) != (B, D, W):
        raise ValueError(
            f"dynamic_conv_step: state must be [B, D, W] = [{B}, {D}, {W}], got shape {tuple(state.shape)}"
        )
    _check_same_device("kernels", kernels, x)
    _check_same_device("state", state, x)
    backend = resolve("dynamic_conv_step", backend, Call.of(x, tokens=1))
    if backend == "torch":
        return dynamic_conv_step_torch(x, kernels, state, act)
    from sleepify.ops.dynamic_conv.triton_kernels import dconv_step_triton

    return dconv_step_triton(x.contiguous(), kernels.contiguous(), state.contiguous(), act == "silu")
