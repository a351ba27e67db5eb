"""GatedDeltaNet token mixer, as in fla (short convolutions on q, k, v), with an explicit state.

Used by the paper's from-scratch synthetic-task models (the 4-layer attention/GDN hybrid of §4, §6.1).
Parameter names follow fla's ``fla.layers.GatedDeltaNet`` (q_proj, k_proj, v_proj, a_proj, b_proj,
A_log, dt_bias, {q,k,v}_conv1d, g_proj, o_norm, o_proj).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sleepify.layers.gates import delta_rule_gates, init_decay_parameters
from sleepify.layers.norm import GatedRMSNorm
from sleepify.layers.state import MixerState
from sleepify.ops.gated_delta_rule import gated_delta_rule
from sleepify.ops.short_conv import short_conv, short_conv_step


@dataclass
class GatedDeltaNetConfig:
    hidden_size: int
    num_heads: int = 4
    head_dim: int = 64
    num_v_heads: int | None = None  # grouped value heads (HV a multiple of num_heads); None = num_heads
    expand_v: float = 2.0
    conv_size: int = 4
    norm_eps: float = 1e-5
    decay_init: str = "spread"  # forget-gate init (sleepify.layers.gates.decay_init_values)
    decay_rate_min: float = 1e-3  # the "spread" init's slowest per-token rate

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def v_heads(self) -> int:
        return self.num_v_heads or self.num_heads

    @property
    def head_v_dim(self) -> int:
        return int(self.head_dim * self.expand_v)

    @property
    def value_dim(self) -> int:
        return self.v_heads * self.head_v_dim


class GatedDeltaNet(nn.Module):
    def __init__(self, config: GatedDeltaNetConfig, zero_output: bool = False):
        super().__init__()
        c = self.config = config
        if c.v_heads % c.num_heads:
            raise ValueError(f"num_v_heads ({c.v_heads}) must be a multiple of num_heads ({c.num_heads})")
        D = c.hidden_size
        self.q_proj = nn.Linear(D, c.key_dim, bias=False)
        self.k_proj = nn.Linear(D, c.key_dim, bias=False)
        self.v_proj = nn.Linear(D, c.value_dim, bias=False)
        self.a_proj = nn.Linear(D, c.v_heads, bias=False)
        self.b_proj = nn.Linear(D, c.v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(c.v_heads))
        self.dt_bias = nn.Parameter(torch.empty(c.v_heads))
        init_decay_parameters(self.A_log, self.dt_bias, c.decay_init, rate_min=c.decay_rate_min)
        self.q_conv1d = nn.Conv1d(c.key_dim, c.key_dim, c.conv_size, groups=c.key_dim, bias=False)
        self.k_conv1d = nn.Conv1d(c.key_dim, c.key_dim, c.conv_size, groups=c.key_dim, bias=False)
        self.v_conv1d = nn.Conv1d(c.value_dim, c.value_dim, c.conv_size, groups=c.value_dim, bias=False)
        self.g_proj = nn.Linear(D, c.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(c.head_v_dim, eps=c.norm_eps)
        self.o_proj = nn.Linear(c.value_dim, D, bias=False)
        if zero_output:
            nn.init.zeros_(self.o_proj.weight)

    def _convs(self) -> tuple[nn.Conv1d, nn.Conv1d, nn.Conv1d]:
        return self.q_conv1d, self.k_conv1d, self.v_conv1d

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: MixerState | None = None,
        attention_mask: torch.Tensor | None = None,
        output_state: bool = True,
        backend: str = "auto",
    ) -> tuple[torch.Tensor, MixerState | None]:
        """hidden_states ``[B, T, D]``; attention_mask ``[B, T]`` (1 = token, 0 = left padding).

        Padding never reaches the state: its conv inputs are zeroed (the same as the zero history a
        fresh state holds) and its decay/write gates are neutral (g = 0, beta = 0).
        """
        c = self.config
        B, T, _ = hidden_states.shape
        x = hidden_states
        projections = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        if attention_mask is not None:
            keep = attention_mask[..., None].to(x.dtype)
            projections = [p * keep for p in projections]
        conv_states = state.conv if state is not None and state.conv else (None, None, None)
        new_conv: list[torch.Tensor] = []
        outs = []
        for proj, conv, conv_state in zip(projections, self._convs(), conv_states, strict=True):
            if T == 1 and conv_state is not None:
                y, s = short_conv_step(proj[:, 0], conv.weight, conv_state)
                y = y[:, None]
            else:
                y, s = short_conv(
                    proj, conv.weight, initial_state=conv_state, output_final_state=output_state
                )
            outs.append(y)
            if s is not None:
                new_conv.append(s)
        q, k, v = outs
        q = q.view(B, T, c.num_heads, c.head_dim)
        k = k.view(B, T, c.num_heads, c.head_dim)
        v = v.view(B, T, c.v_heads, c.head_v_dim)
        g, beta = delta_rule_gates(self.a_proj(x), self.b_proj(x), self.A_log, self.dt_bias, attention_mask)
        o, recurrent = gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=None if state is None else state.recurrent,
            output_final_state=output_state,
            use_qk_l2norm=True,
            backend=backend,
        )
        gate = self.g_proj(x).view(B, T, c.v_heads, c.head_v_dim)
        o = self.o_norm(o, gate).reshape(B, T, c.value_dim)
        out = self.o_proj(o.to(x.dtype))
        return out, (MixerState(recurrent, tuple(new_conv)) if output_state else None)

    def empty_state(self, batch_size: int, device: torch.device | None = None) -> MixerState:
        """The zero state a sequence starts from."""
        c = self.config
        device = device or self.q_proj.weight.device
        dtype = self.q_proj.weight.dtype
        return MixerState(
            torch.zeros(batch_size, c.v_heads, c.head_dim, c.head_v_dim, device=device),
            tuple(
                torch.zeros(batch_size, dim, c.conv_size, device=device, dtype=dtype)
                for dim in (c.key_dim, c.key_dim, c.value_dim)
            ),
        )
