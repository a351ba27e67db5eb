"""JetBlock: Jet-Nemotron's token mixer (a gated delta rule with a dynamic convolution on values).

Parameter names follow NVIDIA's Jet-Nemotron checkpoints (``model.layers.{i}.self_attn.*``), so their
weights load as they are::

    q_proj, k_proj, v_proj, b_proj, a_proj, A_log, dt_bias,
    dynamic_conv1d.kernel_generator.{w1,w2}, g_proj, o_norm.weight, o_proj

Math, with ``x`` the (normed) layer input::

    q = silu(q_proj x)          k = silu(k_proj x)            (no convolution on q, k)
    ker = w2(silu(w1 x))        reshaped [B, T, value_dim, W] (flat index d·W + w)
    v = silu(dynamic_conv(v_proj x, ker))                     (tap W-1 multiplies the current token)
    beta = sigmoid(b_proj x)    g = -exp(A_log) · softplus(a_proj x + dt_bias)    (fp32)
    o = gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True)                   (scale head_dim**-0.5)
    out = o_proj(rmsnorm(o) · o_norm.weight · silu(g_proj x))                     (per value head)

The state is explicit (:class:`~sleepify.layers.state.MixerState`): ``recurrent`` is the fp32 fast-weight
matrix ``[B, H, K, V]`` and ``conv`` is a 1-tuple holding the last ``W`` raw ``v_proj`` outputs
``[B, value_dim, W]`` (time last, oldest first), exactly Jet-Nemotron's cache layout.

Padding (``attention_mask`` 2-D, 1 = real token, 0 = padding) is neither attended to nor written into the
state: at padded positions the conv input is zeroed, ``beta = 0`` and ``g = 0`` (the recurrent state passes
through unchanged), and the convolution runs over each row's real tokens only (they are gathered to the
front of the row, convolved after the incoming conv state, and scattered back), so a real token's window
never contains a pad and the returned conv state holds the last ``W`` *real* inputs of each row (preceded by
the incoming state when a row has fewer than ``W`` real tokens). Outputs at padded positions are meaningless
(they are computed from the state but must be ignored). Every batch row has its own states: nothing is packed
across rows, so there is no cross-sequence leakage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sleepify.layers.gates import DECAY_INITS, decay_init_values, delta_rule_gates
from sleepify.layers.norm import GatedRMSNorm
from sleepify.layers.state import MixerState

__all__ = ["DynamicShortConvolution", "JetBlock", "JetBlockConfig"]


@dataclass
class JetBlockConfig:
    """Sizes of a JetBlock (Jet-Nemotron's ``efficient_attention_config["jet"]`` plus the model width).

    ``key_dim = num_heads·head_dim``, ``head_v_dim = int(head_dim·expand_v)``,
    ``value_dim = num_heads·head_v_dim``; the kernel generator's hidden width is
    ``value_dim // generator_reduction``. ``zero_output`` zero-initialises ``o_proj`` so that inserting the
    block into a pretrained residual stream changes nothing at initialisation. ``decay_init`` picks the
    forget-gate initialisation (``"spread"``, the default, or ``"fla"``) and ``decay_rate_min`` the spread
    init's slowest rate (see :func:`sleepify.layers.gates.decay_init_values`).
    """

    hidden_size: int = 2048
    num_heads: int = 6
    head_dim: int = 256
    expand_v: float = 2.0
    conv_size: int = 4
    generator_reduction: int = 8
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    zero_output: bool = False
    decay_init: str = "spread"
    decay_rate_min: float = 1e-3

    def __post_init__(self) -> None:
        # Jet-Nemotron configs store norm_eps as a string ("1e-5").
        self.norm_eps = float(self.norm_eps)
        self.expand_v = float(self.expand_v)
        for name in ("hidden_size", "num_heads", "head_dim", "conv_size", "generator_reduction"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"JetBlockConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))
        if self.decay_init not in DECAY_INITS:
            raise ValueError(
                f"JetBlockConfig.decay_init must be one of {DECAY_INITS}, got {self.decay_init!r}"
            )
        if self.head_v_dim < 1 or self.generator_hidden < 1:
            raise ValueError(
                f"JetBlockConfig: head_dim·expand_v = {self.head_v_dim} and value_dim // generator_reduction "
                f"= {self.generator_hidden} must both be >= 1"
            )

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def head_v_dim(self) -> int:
        # Upstream uses int(head_dim * expand_v); expand_v = 2.6666666667 with head_dim 96 gives 256.
        return int(self.head_dim * self.expand_v)

    @property
    def value_dim(self) -> int:
        return self.num_heads * self.head_v_dim

    @property
    def generator_hidden(self) -> int:
        return self.value_dim // self.generator_reduction

    @classmethod
    def from_jet_nemotron(
        cls, jet: dict, hidden_size: int, initializer_range: float = 0.02, **overrides
    ) -> JetBlockConfig:
        """Build from a Jet-Nemotron ``efficient_attention_config["jet"]`` dict (GPU-only keys such as
        ``mode`` and ``dconv_implementation`` are ignored: the ops pick their backend)."""
        kwargs = dict(
            hidden_size=hidden_size,
            num_heads=jet.get("num_heads", cls.num_heads),
            head_dim=jet.get("head_dim", cls.head_dim),
            expand_v=jet.get("expand_v", cls.expand_v),
            conv_size=jet.get("conv_size", cls.conv_size),
            generator_reduction=jet.get("dconv_generator_reduction", cls.generator_reduction),
            norm_eps=jet.get("norm_eps", cls.norm_eps),
            initializer_range=initializer_range,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


class DynamicShortConvolution(nn.Module):
    """Holds the kernel generator ``Linear(D_in, value_dim // r, no bias) → SiLU → Linear(→ value_dim·W)``;
    the convolution itself is the ``sleepify.ops.dynamic_conv`` op (see :meth:`JetBlock.forward`)."""

    def __init__(self, hidden_size: int, kernel_size: int, generator_input_size: int, generator_hidden: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.kernel_generator = nn.Sequential()
        self.kernel_generator.add_module("w1", nn.Linear(generator_input_size, generator_hidden, bias=False))
        self.kernel_generator.add_module("act", nn.SiLU())
        self.kernel_generator.add_module(
            "w2", nn.Linear(generator_hidden, hidden_size * kernel_size, bias=True)
        )

    def kernels(self, generator_input: Tensor) -> Tensor:
        """Per-token kernels ``[B, T, D, W]`` from ``generator_input [B, T, D_in]``.

        The generator output is split as ``'b t (d w) -> b t d w'``."""
        k = self.kernel_generator(generator_input)
        return k.view(*k.shape[:-1], self.hidden_size, self.kernel_size)


class JetBlock(nn.Module):
    """Jet-Nemotron's JetBlock token mixer with an explicit state (see the module docstring)."""

    def __init__(self, config: JetBlockConfig):
        super().__init__()
        self.config = config
        c = config
        self.hidden_size = c.hidden_size
        self.num_heads = c.num_heads
        self.head_k_dim = c.head_dim
        self.head_v_dim = c.head_v_dim
        self.key_dim = c.key_dim
        self.value_dim = c.value_dim
        self.conv_size = c.conv_size

        self.q_proj = nn.Linear(c.hidden_size, c.key_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.key_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.value_dim, bias=False)
        self.b_proj = nn.Linear(c.hidden_size, c.num_heads, bias=False)
        self.a_proj = nn.Linear(c.hidden_size, c.num_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(c.num_heads, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.dt_bias = nn.Parameter(torch.empty(c.num_heads, dtype=torch.float32))
        self.dt_bias._no_weight_decay = True
        self.dynamic_conv1d = DynamicShortConvolution(
            hidden_size=c.value_dim,
            kernel_size=c.conv_size,
            generator_input_size=c.hidden_size,
            generator_hidden=c.generator_hidden,
        )
        self.g_proj = nn.Linear(c.hidden_size, c.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(c.head_v_dim, eps=c.norm_eps)
        self.o_proj = nn.Linear(c.value_dim, c.hidden_size, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def initial_values(self, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Upstream's special initial values, keyed by parameter name (the plain Linear weights are not
        included; they get the usual ``normal(0, initializer_range)``).

        - ``A_log``, ``dt_bias``: :func:`~sleepify.layers.gates.decay_init_values` with ``config.decay_init``
          (``"fla"`` is upstream's: ``A_log = log(U(0, 16))``, ``dt = exp(U(log 1e-3, log 0.1))`` ≥ 1e-4;
          ``"spread"``, the default, is deterministic: ``A = 1``, per-head rates log-spaced in [1e-3, 0.1])
        - kernel generator: zero weights, ``w2.bias ~ normal(0, initializer_range)`` (a static kernel)
        - ``o_proj.weight = 0`` when ``config.zero_output``.
        """
        c = self.config
        dev = self.A_log.device
        values: dict[str, Tensor] = {}
        if dev.type == "meta":  # shapes only
            values["A_log"] = torch.empty_like(self.A_log)
            values["dt_bias"] = torch.empty_like(self.dt_bias)
        else:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            A_log, dt_bias = decay_init_values(
                c.num_heads,
                c.decay_init,
                generator=generator if gen_device.type == "cpu" else None,
                rate_min=c.decay_rate_min,
            )
            values["A_log"], values["dt_bias"] = A_log.to(dev), dt_bias.to(dev)
        gen = self.dynamic_conv1d.kernel_generator
        values["dynamic_conv1d.kernel_generator.w1.weight"] = torch.zeros_like(gen.w1.weight)
        values["dynamic_conv1d.kernel_generator.w2.weight"] = torch.zeros_like(gen.w2.weight)
        bias = torch.empty_like(gen.w2.bias)
        if bias.device.type != "meta":
            bias.normal_(0.0, c.initializer_range, generator=generator)
        values["dynamic_conv1d.kernel_generator.w2.bias"] = bias
        if c.zero_output:
            values["o_proj.weight"] = torch.zeros_like(self.o_proj.weight)
        return values

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        std = self.config.initializer_range
        for lin in (
            self.q_proj,
            self.k_proj,
            self.v_proj,
            self.b_proj,
            self.a_proj,
            self.g_proj,
            self.o_proj,
        ):
            lin.weight.normal_(0.0, std, generator=generator)
        self.o_norm.weight.fill_(1.0)
        params = dict(self.named_parameters())
        for name, value in self.initial_values(generator).items():
            params[name].copy_(value)

    # --------------------------------------------------------------- forward
    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> MixerState:
        """The empty state: zero fast weights (fp32) and a zero conv window."""
        device = device if device is not None else self.A_log.device
        dtype = dtype if dtype is not None else self.v_proj.weight.dtype
        rec = torch.zeros(batch_size, self.num_heads, self.head_k_dim, self.head_v_dim, device=device)
        conv = torch.zeros(batch_size, self.value_dim, self.conv_size, device=device, dtype=dtype)
        return MixerState(rec, (conv,))

    def forward(
        self,
        hidden_states: Tensor,
        state: MixerState | None = None,
        attention_mask: Tensor | None = None,
        output_state: bool = True,
        backend: str | dict[str, str] = "auto",
    ) -> tuple[Tensor, MixerState | None]:
        """Mix ``hidden_states [B, T, D]`` starting from ``state`` (None = empty).

        Args:
            hidden_states: the (normed) layer input ``[B, T, hidden_size]``.
            state: the state after the previous window, or None.
            attention_mask: optional 2-D ``[B, T]`` mask of this window, 1 = real token, 0 = padding.
            output_state: return the state after this window (else None).
            backend: the ops' backends. ``"auto"`` lets each op pick per device; one name (e.g.
                ``"recurrent"``, ``"chunk"``, ``"torch"``, ``"triton"``, ``"fla"``) goes to every op that
                knows it, the others use ``"auto"``; or a dict ``{"gdr": ..., "conv": ..., "norm": ...}``.

        Returns:
            ``(out [B, T, hidden_size], MixerState | None)``.
        """
        from sleepify.ops.dynamic_conv import dynamic_conv, dynamic_conv_step
        from sleepify.ops.gated_delta_rule import gated_delta_rule

        B, T, _ = hidden_states.shape
        x = hidden_states
        gdr_backend, conv_backend, norm_backend = _split_backend(backend)

        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, T):
                raise ValueError(
                    f"JetBlock: attention_mask must be 2-D [B, T] = {(B, T)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask.to(device=x.device, dtype=torch.bool)
            if bool(mask.all()):
                mask = None

        rec_state = state.recurrent if state is not None else None
        conv_state = state.conv[0] if state is not None and len(state.conv) > 0 else None

        q = F.silu(self.q_proj(x)).view(B, T, self.num_heads, self.head_k_dim)
        k = F.silu(self.k_proj(x)).view(B, T, self.num_heads, self.head_k_dim)
        v_in = self.v_proj(x)
        kernels = self.dynamic_conv1d.kernels(x)
        g, beta = delta_rule_gates(self.a_proj(x), self.b_proj(x), self.A_log, self.dt_bias, mask)
        if mask is not None:
            v_in = v_in * mask.unsqueeze(-1).to(v_in.dtype)

        if conv_state is None and (output_state or (T == 1 and state is not None)):
            conv_state = v_in.new_zeros(B, self.value_dim, self.conv_size)

        if T == 1 and state is not None:
            # decode: one token, rolling conv window
            v1, new_conv = dynamic_conv_step(
                v_in[:, 0], kernels[:, 0], conv_state, activation="silu", backend=conv_backend
            )
            v = v1.unsqueeze(1)
            if mask is not None:  # a padded decode step leaves the window untouched
                new_conv = torch.where(mask[:, 0, None, None], new_conv, conv_state)
        elif mask is None:
            v, new_conv = dynamic_conv(
                v_in,
                kernels,
                initial_state=conv_state,
                output_final_state=output_state,
                activation="silu",
                backend=conv_backend,
            )
        else:
            v, new_conv = self._masked_conv(v_in, kernels, mask, conv_state, output_state, conv_backend)

        v = v.view(B, T, self.num_heads, self.head_v_dim)
        o, new_rec = gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            scale=self.head_k_dim**-0.5,
            initial_state=rec_state,
            output_final_state=output_state,
            use_qk_l2norm=True,
            backend=gdr_backend,
        )
        gate = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim)
        o = self.o_norm(o, gate, backend=norm_backend)
        out = self.o_proj(o.reshape(B, T, self.value_dim).to(x.dtype))
        if not output_state:
            return out, None
        return out, MixerState(new_rec, (new_conv,))

    def _masked_conv(
        self,
        v_in: Tensor,
        kernels: Tensor,
        mask: Tensor,
        conv_state: Tensor | None,
        output_state: bool,
        backend: str,
    ) -> tuple[Tensor, Tensor | None]:
        """Dynamic conv over each row's real tokens only.

        Real tokens are moved (stably) to the front of their row, convolved right after the incoming conv
        state, and moved back; the final state is the last ``W`` real inputs (after the incoming state).
        """
        from sleepify.ops.dynamic_conv import dynamic_conv

        B, T, D = v_in.shape
        W = self.conv_size
        pos = torch.arange(T, device=v_in.device).expand(B, T)
        order = torch.where(mask, pos, pos + T).argsort(dim=1, stable=True)  # real tokens first
        inverse = order.argsort(dim=1)
        v_c = v_in.gather(1, order[..., None].expand(B, T, D))
        k_c = kernels.gather(1, order[..., None, None].expand(B, T, D, W))
        y_c, _ = dynamic_conv(v_c, k_c, initial_state=conv_state, activation="silu", backend=backend)
        y = y_c.gather(1, inverse[..., None].expand(B, T, D))
        y = y * mask.unsqueeze(-1).to(y.dtype)
        if not output_state:
            return y, None
        prev = (
            conv_state.transpose(1, 2).to(v_in.dtype) if conv_state is not None else v_in.new_zeros(B, W, D)
        )
        ext = torch.cat([prev, v_c], dim=1)  # [B, W+T, D]: state, then the real tokens, then pads
        n_real = mask.sum(dim=1)  # the last W real inputs sit at ext[n_real : n_real + W]
        idx = n_real[:, None] + torch.arange(W, device=v_in.device)
        final = ext.gather(1, idx[..., None].expand(B, W, D)).transpose(1, 2)
        return y, final.contiguous()


def _split_backend(backend: str | dict[str, str]) -> tuple[str, str, str]:
    """Backends of the three ops (gated delta rule, dynamic conv, gated norm).

    ``backend`` is one name, given to each op that knows it (the others get ``"auto"``), or a dict with
    keys ``"gdr"``, ``"conv"``, ``"norm"`` (missing keys mean ``"auto"``).
    """
    if isinstance(backend, dict):
        unknown = set(backend) - {"gdr", "conv", "norm"}
        if unknown:
            raise ValueError(f"JetBlock: unknown backend keys {sorted(unknown)}; use 'gdr', 'conv', 'norm'")
        return backend.get("gdr", "auto"), backend.get("conv", "auto"), backend.get("norm", "auto")
    if backend == "auto":
        return "auto", "auto", "auto"
    import importlib

    ops = [
        importlib.import_module(f"sleepify.ops.{name}")
        for name in ("gated_delta_rule", "dynamic_conv", "gated_rmsnorm")
    ]
    names = [backend if backend in op.BACKENDS else "auto" for op in ops]
    if all(n == "auto" for n in names):
        valid = sorted({b for op in ops for b in op.BACKENDS})
        raise ValueError(f"JetBlock: unknown backend {backend!r}; valid names: {valid}")
    return names[0], names[1], names[2]
