"""Numerical ops. Each has a pure-torch reference and faster paths tested against it.

| op | reference | faster paths |
|---|---|---|
| ``gated_delta_rule`` | token-by-token recurrence | chunked torch (CPU), fla chunk / fused recurrent |
| ``dynamic_conv`` / ``dynamic_conv_step`` | torch | our Triton kernels (CUDA; interpreter on CPU) |
| ``short_conv`` / ``short_conv_step`` | torch (``F.conv1d``) | — |
| ``gated_rmsnorm`` | torch | fla's fused kernel (CUDA) |
| ``window_attention`` | fp32 masked softmax | SDPA, flash-attn (CUDA fp16/bf16), fla attention (Triton) |

``sleepify.ops.float32_linear`` (not re-exported: not part of an export's kernel): half-precision weights
whose linear products run in float32, for CPUs without bf16 units; reference: its definition.

GPU libraries (Triton kernels, fla, flash-attn) are imported only when their backend is selected.
Which backend runs (``backend="auto"``) and what each needs is one table, ``sleepify/ops/registry.py``;
``sleepify doctor`` prints it for the machine at hand.
"""

from sleepify.ops.attention import window_attention
from sleepify.ops.dynamic_conv import dynamic_conv, dynamic_conv_step
from sleepify.ops.gated_delta_rule import gated_delta_rule, l2norm
from sleepify.ops.gated_rmsnorm import gated_rmsnorm
from sleepify.ops.short_conv import short_conv, short_conv_step

__all__ = [
    "dynamic_conv",
    "dynamic_conv_step",
    "gated_delta_rule",
    "gated_rmsnorm",
    "l2norm",
    "short_conv",
    "short_conv_step",
    "window_attention",
]
