"""The per-token decay and write strength of the gated delta rule, shared by GatedDeltaNet and JetBlock."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def delta_rule_gates(
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """g = -exp(A_log) * softplus(a + dt_bias) (log decay, fp32) and beta = sigmoid(b), both [B, T, HV].

    At padded positions (attention_mask == 0) g = 0 and beta = 0: the state passes through unchanged,
    so padding never writes into the fast weights.
    """
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    beta = b.float().sigmoid()
    if attention_mask is not None:
        keep = attention_mask[..., None].to(torch.bool)
        g = g.masked_fill(~keep, 0.0)
        beta = beta.masked_fill(~keep, 0.0)
    return g, beta


DECAY_INITS = ("spread", "fla")
# "spread": per-token log-decay rates A * dt of the heads, log-spaced over [SPREAD_RATE_MIN, SPREAD_RATE_MAX]
SPREAD_RATE_MIN = 1e-3
SPREAD_RATE_MAX = 0.1
SPREAD_WINDOWS = 40  # the slowest time constant is at least this many windows of L tokens


def spread_rate_min(window: int) -> float:
    """The slowest rate of the "spread" init for windows of ``window`` tokens: time constants reach the
    larger of 1000 tokens and 40 windows, ``min(1e-3, 1 / (40 L))``. 1e-3 for L <= 25 (the built-in Rule 110
    models); 3.3e-4 for L = 75 (Depo); 1.25e-5 for L = 2000 (GSM-Infinite), where 1e-3 would leave
    ``exp(-1e-3 * 4 * 2000) = 3e-4`` of a window after one window slept with N = 4.

    Example::

        assert spread_rate_min(24) == 1e-3 and spread_rate_min(2000) == 1.25e-5
    """
    return min(SPREAD_RATE_MIN, 1.0 / (SPREAD_WINDOWS * window))


def spread_rates(
    num_heads: int, rate_min: float = SPREAD_RATE_MIN, rate_max: float = SPREAD_RATE_MAX
) -> torch.Tensor:
    """The "spread" init's per-token log-decay rate of each head (decay at init = ``exp(-rate)``).

    Head ``h`` of ``H`` gets ``rate_min**(1 - u) * rate_max**u`` with ``u = (h + 0.5) / H`` (the midpoints
    of ``H`` equal bins in log space), so the time constants ``1 / rate`` cover [10, 1000] tokens with
    the defaults, the same for every seed. Float64 ``[H]``.
    """
    u = (torch.arange(num_heads, dtype=torch.float64) + 0.5) / num_heads
    return torch.exp(math.log(rate_min) * (1 - u) + math.log(rate_max) * u)


def decay_init_values(
    num_heads: int,
    kind: str = "spread",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dt_min: float = 1e-3,
    dt_max: float = 0.1,
    dt_floor: float = 1e-4,
    rate_min: float = SPREAD_RATE_MIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial ``(A_log, dt_bias)`` (float32 ``[H]``) of a gated delta rule with ``H`` decay heads.

    The per-token decay is ``exp(g)`` with ``g = -exp(A_log) * softplus(a + dt_bias)``; at initialisation
    ``a`` is small, so the decay is about ``exp(-A * dt)`` with ``dt = softplus(dt_bias)``.

    - ``"spread"`` (default): ``A = 1`` and ``dt`` = :func:`spread_rates` (deterministic, the same for
      every seed): decays 0.9968 and 0.969 for two heads, every head above exp(-0.1) = 0.905. The slowest
      rate is ``rate_min`` (converted models use :func:`spread_rate_min` of their window). In a sleep,
      Algorithm 1 re-runs every SSM layer over the window in each of the ``N`` passes, so a head's decay
      acts ``N * L`` times per slept window; with the slowest heads at time constants of hundreds of tokens
      the state written in one window is still readable several slept windows later at ``N = 4``
      (docs/sleep-semantics.md, "Forget-gate initialisation").
    - ``"fla"``: fla's / Mamba2's random draw, ``A ~ U(0, 16)`` and ``dt`` log-uniform in
      ``[dt_min, dt_max]`` (floored at ``dt_floor``): per-token decay anywhere in about [0.2, 1.0), so with
      few heads the memory across windows depends on the seed.

    Example::

        A_log, dt_bias = decay_init_values(4)            # spread
        A_log, dt_bias = decay_init_values(4, "fla", generator=torch.Generator().manual_seed(0))
    """
    if kind not in DECAY_INITS:
        raise ValueError(f"decay_init must be one of {DECAY_INITS}, got {kind!r}")
    if kind == "spread":
        A_log = torch.zeros(num_heads, dtype=torch.float64)
        dt = spread_rates(num_heads, rate_min=rate_min)
    else:
        A = torch.rand(num_heads, generator=generator, dtype=torch.float32) * 16
        A_log = torch.log(A.clamp_min(1e-4)).double()
        u = torch.rand(num_heads, generator=generator, dtype=torch.float32).double()
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp_min(dt_floor)
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    return A_log.float().to(device), dt_bias.float().to(device)


def init_decay_parameters(
    A_log: nn.Parameter,
    dt_bias: nn.Parameter,
    kind: str = "spread",
    generator: torch.Generator | None = None,
    rate_min: float = SPREAD_RATE_MIN,
) -> None:
    """Fill ``A_log`` and ``dt_bias`` in place with :func:`decay_init_values` (``kind``: "spread" | "fla")
    and exclude them from weight decay."""
    with torch.no_grad():
        a, d = decay_init_values(
            A_log.numel(), kind, generator=generator, device=A_log.device, rate_min=rate_min
        )
        A_log.copy_(a.view_as(A_log))
        dt_bias.copy_(d.view_as(dt_bias))
    A_log._no_weight_decay = True  # type: ignore[attr-defined]
    dt_bias._no_weight_decay = True  # type: ignore[attr-defined]
