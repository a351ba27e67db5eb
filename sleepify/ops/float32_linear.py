"""A linear layer with half-precision weights whose products run in float32: for CPUs without bf16 units.

On x86 CPUs without AVX512-BF16 or AMX, PyTorch's bfloat16 (and float16) matrix products fall back to slow
paths. Measured on the 2-core development machine (AMD EPYC, AVX2), ``F.linear`` of 300 x 2048 rows by a
5632 x 2048 weight: 27 GFLOP/s in float32, 5.6 in bfloat16, and the weight gradient of that product
0.49 s in float32 against 107 s in bfloat16 (200x). Storing the weights in bfloat16 is what makes a 1.4B
model's training fit 24 GiB; computing the products in float32 keeps it fast.

:class:`Float32Linear` does both: the weights, their gradients, the activations it returns and what it
keeps for backward stay in their own dtype (the weight is kept as the parameter itself, not a float32
copy: a float32 copy per call would be kept for every pass of every window); only each product is
computed in float32 and rounded once to the output dtype, in forward and in backward. Elsewhere (float32
weights, a GPU) it is :class:`torch.nn.Linear`. The reference is the definition itself:
``F.linear(x.float(), w.float(), b.float()).to(x.dtype)``, with the gradients of that expression
(``tests/ops/test_float32_linear.py``).

:func:`use_float32_products` swaps the class of a model's plain ``nn.Linear`` modules in place (same
parameters, names and state dict) when the CPU lacks native bfloat16 products; ``sleepify.runs.load_model``
calls it, so every stage gets it. ``SLEEPIFY_HALF_PRODUCTS=native`` turns it off (to measure the native
path).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Float32Linear",
    "cpu_has_half_units",
    "float32_linear",
    "float32_products_here",
    "use_float32_products",
]

_HALF = (torch.bfloat16, torch.float16)


class _Float32LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = grad.float()
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g @ weight.float()).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = (g2.t() @ x.reshape(-1, x.shape[-1]).float()).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            gb = g2.sum(0).to(ctx.bias_dtype)
        return gx, gw, gb


def float32_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` computed in float32 and rounded to ``x.dtype``; gradients likewise, each in its
    tensor's dtype. Keeps ``x`` and ``weight`` (no copies) for backward."""
    return _Float32LinearFn.apply(x, weight, bias)


class Float32Linear(nn.Linear):
    """``nn.Linear`` whose products run in float32 when its weight is half precision on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dtype in _HALF and self.weight.device.type == "cpu":
            return float32_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def cpu_has_half_units() -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX512-BF16 / AMX, as oneDNN sees it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast half path either
        return False


def float32_products_here() -> bool:
    """The one decision for this machine (linear layers here, Muon's iteration in training/optim.py):
    float32 products for half-precision CPU tensors, unless the CPU has bf16 units or
    ``SLEEPIFY_HALF_PRODUCTS=native``."""
    return os.environ.get("SLEEPIFY_HALF_PRODUCTS", "").lower() != "native" and not cpu_has_half_units()


def use_float32_products(model: nn.Module, force: bool | None = None) -> int:
    """Make ``model``'s plain ``nn.Linear`` modules with half-precision CPU weights compute in float32
    (class swapped in place; parameters untouched). By default only on a CPU without native bfloat16
    products and unless ``SLEEPIFY_HALF_PRODUCTS=native``; ``force`` overrides both. Returns how many
    modules were swapped."""
    if force is None:
        force = float32_products_here()
    if not force:
        return 0
    swapped = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module) is nn.Linear and w is not None and w.dtype in _HALF and w.device.type == "cpu":
            module.__class__ = Float32Linear
            swapped += 1
    return swapped
