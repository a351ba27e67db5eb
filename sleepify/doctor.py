"""``sleepify doctor``: what this install runs, and whether it computes the right thing.

Three parts: the versions of the libraries sleepify uses and the devices torch sees; for every op and
situation (gated delta rule prefill / decode, dynamic convolution sequence / step, short convolution,
gated RMSNorm, window attention prefill / decode) the backend ``backend="auto"`` picks on this device
and dtype and why, read from the table the ops themselves use (``sleepify/ops/registry.py``); and a
self-check of every backend that can run here against the float64 torch reference on CPU, forward and
(where the situation needs them) gradients, with a tolerance per dtype.

A failed check of a backend that ``auto`` would pick makes the report not ok (``sleepify doctor`` exits
with 1); other backends' failures are listed but only matter to someone who forces them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CASES", "PACKAGES", "TOLERANCE", "Case", "run_doctor", "versions"]

# distribution names (what pip installs); fla ships as two
PACKAGES = (
    "torch",
    "triton",
    "transformers",
    "fla-core",
    "flash-linear-attention",
    "flash-attn",
    "datasets",
    "huggingface_hub",
    "safetensors",
    "einops",
)

# max |got - ref| / max |ref| against the float64 reference. float32 allows for TF32 matmuls in Triton
# kernels (fla's tl.dot default), bf16 for its 8-bit mantissa over a 128-token recurrence.
TOLERANCE = {"float64": 1e-6, "float32": 2e-3, "float16": 1e-2, "bfloat16": 3e-2}


def versions() -> dict[str, str | None]:
    """Installed versions (None: not installed), read from package metadata without importing."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def devices() -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "rocm_build": getattr(torch.version, "hip", None),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append(  # type: ignore[union-attr]
                {
                    "index": i,
                    "name": p.name,
                    "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                }  # fmt: skip
            )
    return info


# ----------------------------------------------------------------------------------------------------------
# self-check cases: inputs built in float64 on CPU, the reference computed there, the backend run on the
# device in the dtype under test


@dataclass(frozen=True)
class Case:
    op: str  # registry name
    label: str  # the situation
    grad: bool  # the situation needs gradients (checked too)
    tokens: int
    inputs: Callable[[], dict]  # float64 CPU tensors (keyword arguments of run)
    run: Callable[..., tuple]  # (backend, **inputs) -> output tensors
    fp32: tuple[
        str, ...
    ] = ()  # inputs the layers always pass in float32 (gates, weights), whatever the dtype


def _gen(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)


def _gdr_inputs(T: int) -> Callable[[], dict]:
    def make() -> dict:
        import torch

        r = _gen(T)
        B, H, HV, K, V = 2, 2, 4, 32, 64
        return dict(
            q=r(B, T, H, K),
            k=r(B, T, H, K),
            v=r(B, T, HV, V),
            g=torch.nn.functional.logsigmoid(r(B, T, HV) + 3),
            beta=torch.sigmoid(r(B, T, HV)),
            initial_state=r(B, HV, K, V) * 0.1,
        )

    return make


def _gdr_run(backend: str, **x) -> tuple:
    from sleepify.ops import gated_delta_rule

    state = x.pop("initial_state").float()  # states are float32 in every backend
    return gated_delta_rule(**x, initial_state=state, output_final_state=True, backend=backend)


def _dconv_inputs() -> dict:
    r = _gen(1)
    B, T, D, W = 2, 64, 32, 4
    return dict(x=r(B, T, D), kernels=r(B, T, D, W) * 0.5, initial_state=r(B, D, W))


def _dconv_run(backend: str, **x) -> tuple:
    from sleepify.ops import dynamic_conv

    return dynamic_conv(**x, output_final_state=True, backend=backend)


def _dconv_step_inputs() -> dict:
    r = _gen(2)
    B, D, W = 2, 32, 4
    return dict(x=r(B, D), kernels=r(B, D, W) * 0.5, state=r(B, D, W))


def _dconv_step_run(backend: str, **x) -> tuple:
    from sleepify.ops import dynamic_conv_step

    return dynamic_conv_step(**x, backend=backend)


def _short_conv_inputs() -> dict:
    r = _gen(3)
    B, T, D, W = 2, 32, 16, 4
    return dict(x=r(B, T, D), weight=r(D, W) * 0.5, initial_state=r(B, D, W))


def _short_conv_run(backend: str, **x) -> tuple:
    import torch

    from sleepify.ops import short_conv, short_conv_step

    if backend == "reference":  # token by token through the step function: an independent path
        state, ys = x["initial_state"], []
        for t in range(x["x"].shape[1]):
            y, state = short_conv_step(x["x"][:, t], x["weight"], state)
            ys.append(y)
        return torch.stack(ys, 1), state
    return short_conv(**x, output_final_state=True)


def _norm_inputs() -> dict:
    r = _gen(4)
    return dict(x=r(2, 16, 64), gate=r(2, 16, 64), weight=1 + 0.1 * r(64))


def _norm_run(backend: str, **x) -> tuple:
    from sleepify.ops import gated_rmsnorm

    return (gated_rmsnorm(**x, backend=backend),)


def _attn_inputs(Tq: int, K: int) -> Callable[[], dict]:
    def make() -> dict:
        import torch

        r = _gen(5 + Tq)
        return dict(
            q=r(2, 4, Tq, 32),
            k=r(2, 2, K, 32),
            v=r(2, 2, K, 32),
            q_index=torch.arange(K - Tq, K),
            k_index=torch.arange(K),
            span=48 if Tq > 1 else None,
        )

    return make


def _attn_run(backend: str, **x) -> tuple:
    import torch

    from sleepify.ops import window_attention
    from sleepify.ops.attention import allowed_keys

    span = x.pop("span")
    if backend == "reference":  # the op's own reference computes in float32; this one keeps float64
        q, k, v = x["q"], x["k"], x["v"]
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        allowed = allowed_keys(x["q_index"], x["k_index"], None, span)[:, None]
        return (torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v,)
    return (window_attention(**x, span=span, aligned=True, backend=backend),)


CASES: tuple[Case, ...] = (
    Case("gated_delta_rule", "prefill / training", True, 128, _gdr_inputs(128), _gdr_run, ("g", "beta")),
    Case("gated_delta_rule", "decode", False, 1, _gdr_inputs(1), _gdr_run, ("g", "beta")),
    Case("dynamic_conv", "sequence", True, 64, _dconv_inputs, _dconv_run),
    Case("dynamic_conv_step", "step", False, 1, _dconv_step_inputs, _dconv_step_run),
    Case("short_conv", "sequence", True, 32, _short_conv_inputs, _short_conv_run),
    Case("gated_rmsnorm", "forward", True, 16, _norm_inputs, _norm_run, ("weight",)),
    Case("window_attention", "prefill / training", True, 64, _attn_inputs(64, 64), _attn_run),
    Case("window_attention", "decode", False, 1, _attn_inputs(1, 40), _attn_run),
)


def _rel_err(got, ref) -> float:
    import torch

    got, ref = got.detach().to("cpu", torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _outputs_and_grads(case: Case, backend: str, inputs: dict, device: str, dtype, seed: int) -> list:
    """The case's outputs, then (if it needs gradients) the gradients of every floating input."""
    import torch

    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            to = dtype if value.is_floating_point() else value.dtype
            value = value.to(device, torch.float32 if key in case.fp32 and dtype != torch.float64 else to)
            if case.grad and value.is_floating_point():
                value.requires_grad_(True)
        moved[key] = value
    with torch.enable_grad() if case.grad else torch.no_grad():
        outs = [o for o in case.run(backend, **moved) if o is not None]
        results = [o.detach() for o in outs]
        if case.grad:
            g = torch.Generator().manual_seed(seed)
            loss = sum(
                (o.float() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(device).float()).sum()
                for o in outs
            )
            leaves = [v for v in moved.values() if isinstance(v, torch.Tensor) and v.requires_grad]
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            results += [
                gr if gr is not None else torch.zeros_like(v) for gr, v in zip(grads, leaves, strict=True)
            ]
    return results


def check(case: Case, backend: str, device: str, dtype) -> dict:
    """One backend on one case: max relative error over outputs (and gradients) vs the float64 reference."""
    import torch

    from sleepify.ops.registry import OPS

    name = str(dtype).removeprefix("torch.")
    tol = TOLERANCE[name]
    inputs = case.inputs()
    reference = "reference" if case.op in ("short_conv", "window_attention") else OPS[case.op].reference
    start = time.perf_counter()
    try:
        ref = _outputs_and_grads(case, reference, inputs, "cpu", torch.float64, seed=0)
        got = _outputs_and_grads(case, backend, inputs, device, dtype, seed=0)
        if device == "cuda":
            torch.cuda.synchronize()
        error = max(_rel_err(a, b) for a, b in zip(got, ref, strict=True))
        message = None
    except Exception as err:  # a path that crashes fails its check; the message says how
        error, message = float("inf"), f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return {
        "op": case.op,
        "case": case.label,
        "backend": backend,
        "device": device,
        "dtype": name,
        "error": error,
        "tolerance": tol,
        "ok": error <= tol,
        "message": message,
        "seconds": round(time.perf_counter() - start, 3),
    }


def default_dtypes(device: str) -> list[str]:
    """float32 everywhere; on CUDA also bfloat16 (training under autocast, flash-attn)."""
    return ["float32", "bfloat16"] if device == "cuda" else ["float32"]


def run_doctor(
    device: str = "auto",
    dtypes: list[str] | None = None,
    self_check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The whole report as a dict (``sleepify doctor --json`` prints it); ``report["ok"]`` is the verdict.

    Example::

        report = run_doctor()
        assert report["ok"], [c for c in report["checks"] if c["used"] and not c["ok"]]
    """
    import torch

    from sleepify.ops.registry import OPS, Call, explain, unavailable

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = dtypes or default_dtypes(device)
    report: dict = {"versions": versions(), "devices": devices(), "device": device, "ops": [], "checks": []}
    for case in CASES:
        op = OPS[case.op]
        for name in dtypes:
            call = Call(device, getattr(torch, name), case.grad, case.tokens)
            auto, reason = explain(case.op, call)
            backends = {b.name: unavailable(op, b.name, call) for b in op.backends}
            report["ops"].append(
                {
                    "op": case.op,
                    "case": case.label,
                    "dtype": name,
                    "auto": auto,
                    "reason": reason,
                    "unavailable": {k: v for k, v in backends.items() if v is not None},
                }  # fmt: skip
            )
            if not self_check:
                continue
            for backend, why in backends.items():
                if why is not None:
                    continue
                if progress:
                    progress(f"checking {case.op} {case.label} {backend} {name}")
                result = check(case, backend, device, getattr(torch, name))
                result["used"] = backend == auto
                report["checks"].append(result)
    report["ok"] = all(c["ok"] for c in report["checks"] if c["used"])
    return report


def format_report(report: dict) -> str:
    """The human-readable report."""
    lines = ["sleepify doctor", "", "versions"]
    v = report["versions"]
    d = report["devices"]
    build = (
        f"CUDA {d['cuda_build']}"
        if d["cuda_build"]
        else f"ROCm {d['rocm_build']}"
        if d["rocm_build"]
        else "CPU"
    )
    width = max(len(k) for k in v)
    for key, value in v.items():
        extra = f" ({build} build)" if key == "torch" else ""
        lines.append(f"  {key.ljust(width)}  {value or 'not installed'}{extra}")
    lines += ["", "devices"]
    threads = f"{d['torch_threads']} torch threads, OMP_WAIT_POLICY={d['omp_wait_policy'] or 'unset'}"
    lines.append(f"  cpu   {d['cpu_cores']} cores, {threads}")
    if d["gpus"]:
        for gpu in d["gpus"]:
            lines.append(
                f"  cuda:{gpu['index']}  {gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB)"
            )
    else:
        lines.append(
            "  cuda  none" + (" (torch is a CPU build)" if not d["cuda_build"] else " (no device visible)")
        )
    if d["triton_interpret"] == "1":
        lines.append("  note  TRITON_INTERPRET=1: Triton kernels run in the (slow) interpreter")
    lines += ["", f'backend="auto" on {report["device"]}']
    rows = [(e["op"], e["case"], e["dtype"], e["auto"], e["reason"]) for e in report["ops"]]
    lines += _table(("op", "situation", "dtype", "backend", "why"), rows)
    skipped = sorted({f"{e['op']}/{k}: {w}" for e in report["ops"] for k, w in e["unavailable"].items()})
    if skipped:
        lines += ["", "not available here (not checked)"]
        lines += [f"  {s}" for s in skipped]
    if report["checks"]:
        tol = ", ".join(
            f"{k} {v:g}" for k, v in TOLERANCE.items() if k in {c["dtype"] for c in report["checks"]}
        )
        lines += ["", f"self-check: max |error| / max |reference| vs float64 torch on CPU (tolerance: {tol})"]
        rows = []
        for c in report["checks"]:
            verdict = "ok" if c["ok"] else "FAIL"
            note = c["message"] or ""
            rows.append((c["op"], c["case"], c["dtype"], c["backend"] + (" (auto)" if c["used"] else ""),
                         f"{c['error']:.1e}", verdict + (f"  {note}" if note else "")))  # fmt: skip
        lines += _table(("op", "situation", "dtype", "backend", "error", ""), rows)
        failed_used = [c for c in report["checks"] if c["used"] and not c["ok"]]
        failed_other = [c for c in report["checks"] if not c["used"] and not c["ok"]]
        lines.append("")
        if failed_used:
            lines.append(f"FAILED: {len(failed_used)} check(s) of backends that backend='auto' uses here")
        else:
            lines.append("all backends that backend='auto' uses here pass their check")
        if failed_other:
            lines.append(f"{len(failed_other)} failed check(s) of backends used only when forced (see above)")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = ["  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


if __name__ == "__main__":  # python -m sleepify.doctor
    report = run_doctor()
    print(format_report(report))
    sys.exit(0 if report["ok"] else 1)
