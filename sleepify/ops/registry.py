"""The backend table of every op: name -> implementation requirements, and the ``backend="auto"`` rules.

One place (as fla's backend registry) instead of a ``_resolve_backend`` per op: each op resolves its
``backend=`` argument with :func:`resolve`, and ``sleepify doctor`` reads the same table through
:func:`explain` and :func:`unavailable`, so what doctor reports is what a call runs.

A backend states what it needs: CUDA tensors (or CPU tensors under the Triton interpreter,
``TRITON_INTERPRET=1``, for tests), certain dtypes, an importable library. An op's ``auto`` rule looks at
the call (device, dtype, whether gradients are needed, the number of tokens) and names a backend with the
reason. Call-time conditions the table cannot see stay in the op (window attention falls back to SDPA for
a padded window; see ``sleepify/ops/attention.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sleepify.errors import did_you_mean

__all__ = [
    "OPS",
    "Backend",
    "BackendUnavailableError",
    "Call",
    "Op",
    "explain",
    "module_available",
    "resolve",
    "unavailable",
]

_HALF = (torch.float16, torch.bfloat16)
_FLA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailableError(ValueError, RuntimeError):
    """A backend was asked for on tensors it cannot run on (a ValueError and, as fla's errors, a
    RuntimeError, so callers written against either keep working)."""


_AVAILABLE: dict[str, bool] = {}  # a plain dict, not functools.cache: torch.compile traces a dict lookup


def module_available(name: str) -> bool:
    """Whether ``name`` imports (flash-attn needs its compiled CUDA extension; fla needs triton)."""
    if name not in _AVAILABLE:
        try:
            importlib.import_module(name)
            _AVAILABLE[name] = True
        except Exception:  # ImportError, or an extension built against another torch
            _AVAILABLE[name] = False
    return _AVAILABLE[name]


def interpreter_on() -> bool:
    """Triton's interpreter (``TRITON_INTERPRET=1``) runs Triton kernels on CPU tensors, slowly (tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Backend:
    name: str
    what: str  # one phrase for messages and doctor
    cuda: bool = False  # needs CUDA tensors ...
    interpreter: bool = False  # ... or CPU tensors under TRITON_INTERPRET=1
    dtypes: tuple[torch.dtype, ...] | None = None  # None: any floating dtype
    requires: str | None = None  # a module that must import
    install: str = ""  # how to get ``requires``
    backward: bool = True


@dataclass(frozen=True)
class Call:
    """What an ``auto`` rule looks at."""

    device: str  # "cpu", "cuda", ...
    dtype: torch.dtype = torch.float32
    grad: bool = False  # gradients needed through this call
    tokens: int | None = None  # sequence length (None: not relevant to the op)

    @classmethod
    def of(cls, x: torch.Tensor, *, grad: bool | None = None, tokens: int | None = None) -> Call:
        if grad is None:
            grad = torch.is_grad_enabled()
        return cls(x.device.type, x.dtype, grad, tokens)


@dataclass(frozen=True)
class Op:
    name: str
    reference: str  # the backend every other one is tested against
    backends: tuple[Backend, ...]
    auto: Callable[[Call], tuple[str, str]]  # -> (backend, reason)
    cpu_default: str  # suggested in errors about CUDA-only backends

    @property
    def names(self) -> tuple[str, ...]:
        """Valid ``backend=`` values, ``"auto"`` first."""
        return ("auto", *(b.name for b in self.backends))

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        hint = did_you_mean(name, self.names)
        raise ValueError(
            f"{self.name}: unknown backend {name!r}; valid backends: {', '.join(self.names)}{hint}"
        )


def _problems(b: Backend, call: Call) -> list[tuple[type[Exception], str]]:
    out: list[tuple[type[Exception], str]] = []
    if b.cuda and call.device != "cuda" and not (b.interpreter and interpreter_on()):
        hint = " (or TRITON_INTERPRET=1 set before import, for slow CPU testing)" if b.interpreter else ""
        out.append(
            (
                BackendUnavailableError,
                f"runs {b.what} and needs CUDA tensors, got tensors on '{call.device}'{hint}",
            )
        )
    if b.dtypes is not None and call.dtype not in b.dtypes:
        names = " or ".join(_short(d) for d in b.dtypes)
        out.append((BackendUnavailableError, f"needs {names} tensors, got {_short(call.dtype)}"))
    if not out and b.requires is not None and not module_available(b.requires):
        out.append((ImportError, f"needs {b.requires.split('.')[0]}, which does not import here{b.install}"))
    return out


def unavailable(op: Op, name: str, call: Call) -> str | None:
    """Why backend ``name`` of ``op`` cannot run ``call`` (None: it can), gradients included."""
    b = op.backend(name)
    problems = _problems(b, call)
    if problems:
        return problems[0][1]
    if call.grad and not b.backward:
        return "has no backward (inference only) but gradients are needed"
    return None


def resolve(op_name: str, backend: str, call: Call) -> str:
    """The backend a call runs: ``auto`` by the op's rule, an explicit one after checking it can run.

    An explicit backend without a backward is not refused here when gradients are enabled: the call may
    not need them (the kernel raises in the backward pass if it does).
    """
    op = OPS[op_name]
    if backend == "auto":
        return op.auto(call)[0]
    b = op.backend(backend)  # rejects unknown names
    problems = _problems(b, call)
    if not problems:
        return backend
    error, why = problems[0]
    message = f"{op.name}: backend {backend!r} {why}"
    if b.cuda and call.device != "cuda" and error is BackendUnavailableError:
        message += f"; use backend={op.cpu_default!r} or 'auto' on CPU"
    raise error(message)


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def explain(op_name: str, call: Call) -> tuple[str, str]:
    """``(backend, reason)`` that ``backend="auto"`` picks for ``call`` (what doctor prints)."""
    return OPS[op_name].auto(call)


# ----------------------------------------------------------------------------------------------------------
# the auto rules


def _fla_usable(call: Call, module: str) -> str | None:
    """Why fla cannot take this CUDA call (None: it can)."""
    if call.dtype not in _FLA_DTYPES:
        return f"{_short(call.dtype)}: fla's kernels take fp16/bf16/fp32"
    if not module_available(module):
        return "fla does not import (pip install fla-core flash-linear-attention)"
    return None


def _auto_gated_delta_rule(call: Call) -> tuple[str, str]:
    T = call.tokens or 0
    if call.device == "cuda":
        why_not = _fla_usable(call, "fla.ops.gated_delta_rule")
        if why_not is None:
            if call.grad:
                return "fla_chunk", "CUDA, gradients needed: fla chunk kernel (has a backward)"
            if T > 64:
                return "fla_chunk", f"CUDA prefill of {T} > 64 tokens: fla chunk kernel"
            return "fla_recurrent", "CUDA, no gradients, <= 64 tokens: fla fused recurrent kernel"
        return ("recurrent" if T == 1 else "chunk"), f"torch fallback on CUDA: {why_not}"
    if T == 1:
        return "recurrent", f"{call.device}: one token is one recurrence step (torch)"
    return "chunk", f"{call.device} (not CUDA): chunked torch (WY/UT transform)"


def _auto_dynamic_conv(call: Call) -> tuple[str, str]:
    if call.device == "cuda":
        if module_available("triton"):
            return "triton", "CUDA: our Triton kernels"
        return "torch", "torch fallback on CUDA: triton does not import"
    return "torch", f"{call.device} (not CUDA): torch"


def _auto_gated_rmsnorm(call: Call) -> tuple[str, str]:
    if call.device == "cuda":
        why_not = _fla_usable(call, "fla.modules.norm.fused_norm_gate")
        if why_not is None:
            return "fla", "CUDA: fla's fused norm-gate kernel"
        return "torch", f"torch fallback on CUDA: {why_not}"
    return "torch", f"{call.device} (not CUDA): torch"


def _auto_window_attention(call: Call) -> tuple[str, str]:
    if call.device == "cuda":
        if call.dtype not in _HALF:
            return "sdpa", f"CUDA {_short(call.dtype)}: flash-attn needs fp16/bf16; SDPA"
        if not module_available("flash_attn"):
            return "sdpa", "CUDA fp16/bf16 but flash-attn does not import: SDPA"
        kernel = "flash_attn_func" if call.grad or call.tokens != 1 else "flash_attn_with_kvcache"
        return "flash", f"CUDA fp16/bf16, flash-attn imports: {kernel} (padded windows use SDPA)"
    return "sdpa", f"{call.device} (not CUDA): SDPA"


def _auto_short_conv(call: Call) -> tuple[str, str]:
    return "torch", "the only path: one F.conv1d (no faster form to add)"


_FLA_INSTALL = " (pip install fla-core flash-linear-attention)"

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "gated_delta_rule",
            reference="recurrent",
            backends=(
                Backend("recurrent", "the token-by-token torch recurrence"),
                Backend("chunk", "chunked torch"),
                Backend(
                    "fla_chunk",
                    "fla Triton kernels (chunk_gated_delta_rule)",
                    cuda=True,
                    dtypes=_FLA_DTYPES,
                    requires="fla.ops.gated_delta_rule",
                    install=_FLA_INSTALL,
                ),
                Backend(
                    "fla_recurrent",
                    "fla Triton kernels (fused_recurrent_gated_delta_rule)",
                    cuda=True,
                    interpreter=True,
                    dtypes=_FLA_DTYPES,
                    requires="fla.ops.gated_delta_rule",
                    install=_FLA_INSTALL,
                    backward=False,
                ),
            ),
            auto=_auto_gated_delta_rule,
            cpu_default="chunk",
        ),
        Op(
            "dynamic_conv",
            reference="torch",
            backends=(
                Backend("torch", "torch"),
                Backend("triton", "our Triton kernels", cuda=True, interpreter=True, requires="triton"),
            ),
            auto=_auto_dynamic_conv,
            cpu_default="torch",
        ),
        Op(
            "dynamic_conv_step",
            reference="torch",
            backends=(
                Backend("torch", "torch"),
                Backend(
                    "triton",
                    "our Triton step kernel",
                    cuda=True,
                    interpreter=True,
                    requires="triton",
                    backward=False,
                ),
            ),
            auto=_auto_dynamic_conv,
            cpu_default="torch",
        ),
        Op(
            "short_conv",
            reference="torch",
            backends=(Backend("torch", "torch"),),
            auto=_auto_short_conv,
            cpu_default="torch",
        ),  # fmt: skip
        Op(
            "gated_rmsnorm",
            reference="torch",
            backends=(
                Backend("torch", "torch"),
                Backend(
                    "fla",
                    "fla's fused Triton norm-gate kernel",
                    cuda=True,
                    interpreter=True,
                    requires="fla.modules.norm.fused_norm_gate",
                    install=_FLA_INSTALL,
                ),
            ),
            auto=_auto_gated_rmsnorm,
            cpu_default="torch",
        ),
        Op(
            "window_attention",
            reference="torch",
            backends=(
                Backend("torch", "the fp32 masked-softmax reference"),
                Backend("sdpa", "F.scaled_dot_product_attention"),
                Backend(
                    "flash",
                    "flash-attn (no CPU kernels)",
                    cuda=True,
                    dtypes=_HALF,
                    requires="flash_attn",
                    install=" (pip install flash-attn --no-build-isolation, or 'sleepify[flash-attn]')",
                ),
                Backend(
                    "fla",
                    "fla's Triton attention kernels",
                    cuda=True,
                    interpreter=True,
                    requires="fla.ops.attn",
                    install=_FLA_INSTALL,
                ),
            ),
            auto=_auto_window_attention,
            cpu_default="sdpa",
        ),
    )
}
