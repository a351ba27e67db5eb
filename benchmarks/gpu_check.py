"""GPU check suite: everything a first session on a CUDA machine should run, in under 8 minutes.

    python3 benchmarks/gpu_check.py --plan          # the steps and their time budgets; runs nothing
    python3 benchmarks/gpu_check.py --out DIR       # the whole suite -> DIR/report.json, DIR/report.md
    python3 benchmarks/gpu_check.py --quick         # a ~2-minute subset
    python3 benchmarks/gpu_check.py --tiny          # every step at toy shapes, on CPU too (tests the script)
    python3 benchmarks/gpu_check.py --scale         # only the `scale` step, with its own budget
    python3 benchmarks/gpu_check.py --build-wheels  # fill .gpu-wheels/ (needs PyPI; run it before)

Steps (budgets in ``--plan``):

0. ``doctor``: ``sleepify doctor --json`` (versions, the backend of every op, its self-check).
1. ``pytest``: ``pytest -m cuda`` (every test whose skip condition names CUDA), compiled Triton kernels
   (``TRITON_INTERPRET=0``).
2. ``kernels``: parity and speed at Ouro-1.4B's shapes (Jet layer: 8 heads, K = 128, V = 256; attention:
   16 heads x 128; a window of L = 2000 tokens): our chunked torch gated delta rule vs fla chunk vs fla
   fused recurrent; dynamic convolution Triton vs torch; window attention flash-attn vs SDPA (prefill with
   backward, decode). Errors are relative to a float32 torch reference.
3. ``train``: one bf16 (autocast) training step (forward, backward, Muon/AdamW step) of an Ouro-1.4B-shaped
   sleep hybrid (random weights in the real layout of the ``models/ouro-1.4b`` recipe: 24 blocks + 6 Jet
   layers), B = 1, T = 2L = 4000 (one slept window, one awake and scored), with per-window checkpointing,
   for N = 1 and N = 4: tokens/s, peak memory, and the N = 4 / N = 1 throughput ratio next to the paper's
   1/N and this input's work model 2 / (N + 1) (N passes over the slept window + 1 over the awake one).
4. ``decode``: decode latency (bf16, batch 1, greedy, median of the steps) at 1k and 16k context, the
   sleep hybrid against its own base model with a full KV cache (``sleepify/stages/bench.py``).
5. ``compile``: step 4 with the decode step's blocks under ``torch.compile``.

Not in the suite, run alone by ``--scale`` (its own budget): ``scale``, the user story at its real size
(``benchmarks/bench_scale.py``): a random Ouro-1.4B checkpoint through ``sleepify convert -> data ->
warmup --N 4 -> train --N 4`` (killed once, resumed) ``-> eval -> export ->`` generation without sleepify,
at the paper's L = 2000 in bfloat16, with the memory planner against the measured peaks.

Every step runs in its own process with a hard timeout, so a crash or a hang costs that step only. On a
machine without CUDA the GPU steps are skipped with a note (``--tiny`` runs them at toy shapes instead).

The GPU machine this targets has no network and its own python3 (torch, transformers, triton) but not
fla, pytest or pydantic: ``--build-wheels`` downloads those (pure-Python wheels, plus pydantic-core for
CPython 3.10-3.13) into ``.gpu-wheels/`` (git-ignored, ~15 MB); carry that folder with the source tree.
At start this script unpacks the wheels that fit the running interpreter into ``.gpu-wheels/site`` and
appends it to ``sys.path`` (packages the machine already has win). flash-attn does not fit (compiled
against one torch): its steps report "absent" unless it is installed. Run from the source tree:
``PYTHONPATH=. python3 benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
SITE = WHEELS / "site"

# what --build-wheels downloads: pure-Python wheels at the versions installed here (tested with sleepify),
# fla at its pin, and pydantic-core (compiled) for each CPython below
PURE_WHEELS = ["fla-core==0.6.0", "flash-linear-attention==0.6.0", "einops", "pytest", "pluggy", "iniconfig",
               "pydantic", "annotated-types", "typing-inspection", "typing-extensions"]  # fmt: skip
BINARY_WHEELS = ["pydantic-core"]
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

# Ouro-1.4B's config.json (shared with bench_convert.py) and the models/ouro-1.4b recipe's Jet layers
OURO_1_4B = json.loads((Path(__file__).with_name("ouro-1.4b-config.json")).read_text())
TINY_OURO = {
    **OURO_1_4B,
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 16,
}


# ----------------------------------------------------------------------------------------------------------
# carried wheels


def _installed_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def use_wheels() -> list[str]:
    """Unpack the carried wheels this interpreter can use and lacks (or has older) into .gpu-wheels/site,
    once, and put that folder first on sys.path and PYTHONPATH (the step processes inherit it).
    Returns the wheels used."""
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if not wheels:
        return []
    try:
        from packaging.tags import sys_tags
        from packaging.version import Version

        supported = {str(t) for t in sys_tags()}
    except ImportError:  # packaging comes with transformers; without it take missing pure-Python wheels only
        supported, Version = {"py3-none-any", "py2.py3-none-any"}, None
    used = []
    for wheel in wheels:
        parts = wheel.name[:-4].split("-")
        dist, version = parts[0], parts[1]
        pys, abis, plats = parts[-3].split("."), parts[-2].split("."), parts[-1].split(".")
        if not any(f"{p}-{a}-{pl}" in supported for p in pys for a in abis for pl in plats):
            continue
        have = _installed_version(dist.replace("_", "-"))
        marker = SITE / f".{wheel.name}.done"
        if (
            have is not None
            and not marker.exists()
            and (Version is None or Version(have) >= Version(version))
        ):
            continue  # the machine's own copy is as new: keep it
        if not marker.exists():
            SITE.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(SITE)
            marker.touch()
        used.append(wheel.name)
    if used and str(SITE) not in sys.path:
        sys.path.insert(1, str(SITE))
    keep = [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in (str(ROOT), str(SITE))
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([str(SITE)] if used else []), *keep])
    return used


def build_wheels() -> None:
    """Download the wheels the GPU machine lacks into .gpu-wheels/ (run where PyPI is reachable)."""
    WHEELS.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(WHEELS)]

    def pinned(req: str) -> str:
        have = None if "==" in req else _installed_version(req)
        return f"{req}=={have}" if have else req

    subprocess.run([*pip, *(pinned(r) for r in PURE_WHEELS)], check=True)
    for python in PYTHONS:
        platform_args = [
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            python,
            "--implementation",
            "cp",
        ]
        subprocess.run([*pip, *platform_args, *(pinned(r) for r in BINARY_WHEELS)], check=True)
    size = sum(p.stat().st_size for p in WHEELS.glob("*.whl"))
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {WHEELS} (limit 64 MiB)")


# ----------------------------------------------------------------------------------------------------------
# timing helpers (run inside the step processes)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: compilation, autotuning, allocation
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def rel_err(got, ref) -> float:
    import torch

    got, ref = got.detach().float(), ref.detach().float()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------------------
# the steps (each returns a JSON-ready dict; raising fails the step)


def step_doctor(args: argparse.Namespace) -> dict:
    from sleepify.doctor import run_doctor

    report = run_doctor()
    failed = [c for c in report["checks"] if not c["ok"]]
    return {
        "ok": report["ok"],
        "auto": {
            f"{e['op']} / {e['case']} / {e['dtype']}": f"{e['auto']}: {e['reason']}" for e in report["ops"]
        },
        "failed_checks": failed,
        "versions": report["versions"],
        "devices": report["devices"],
    }


def step_pytest(args: argparse.Namespace) -> dict:
    targets = ["tests/ops"] if args.quick else []
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rfE", *targets]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    summary = lines[-1] if lines else ""
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    # exit code 5: no test selected (not a failure of the code, but nothing was checked)
    return {
        "ok": proc.returncode == 0,
        "returncode": proc.returncode,
        "summary": summary,
        "failures": failures[:40],
        "tail": lines[-60:] if proc.returncode not in (0, 5) else [],
    }


def step_kernels(args: argparse.Namespace) -> dict:
    import torch

    from sleepify.ops import dynamic_conv, dynamic_conv_step, gated_delta_rule, window_attention
    from sleepify.ops.registry import module_available

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny
    B, T = 1, (64 if tiny else 2000)
    H, K, V = (2, 16, 32) if tiny else (8, 128, 256)
    repeats = 1 if (tiny or args.quick) else 3
    bf16 = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, dtype=torch.float32):  # noqa: ANN002, ANN003, ANN202
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dtype)

    out: dict = {"device": dev, "shapes": {"B": B, "T": T, "H": H, "K": K, "V": V}, "rows": []}
    rows = out["rows"]
    cuda_ok = dev == "cuda"
    fla_ok = cuda_ok and module_available("fla.ops.gated_delta_rule")

    # gated delta rule: reference = recurrent float32
    q, k = rnd(B, T, H, K), rnd(B, T, H, K)
    v = rnd(B, T, H, V)
    gate = torch.nn.functional.logsigmoid(rnd(B, T, H) + 3)
    beta = torch.sigmoid(rnd(B, T, H))
    h0 = rnd(B, H, K, V) * 0.1
    with torch.no_grad():
        ref, ref_state = gated_delta_rule(
            q, k, v, gate, beta, initial_state=h0, output_final_state=True, backend="recurrent"
        )
    gdr_paths = [("chunk", torch.float32)]
    if fla_ok:
        gdr_paths += [("fla_chunk", torch.float32), ("fla_chunk", bf16), ("fla_recurrent", bf16)]
    else:
        out["note_gdr"] = "fla kernels skipped: " + ("no CUDA" if not cuda_ok else "fla does not import")
    for backend, dtype in gdr_paths:
        xs = [t.to(dtype) for t in (q, k, v)] + [gate, beta]

        def fwd(backend: str = backend, xs: list = xs) -> tuple:
            with torch.no_grad():
                return gated_delta_rule(*xs, initial_state=h0, output_final_state=True, backend=backend)

        o, s = fwd()
        row = {
            "op": "gated_delta_rule",
            "backend": backend,
            "dtype": str(dtype)[6:],
            "T": T,
            "error": max(rel_err(o, ref), rel_err(s, ref_state)),
            "forward_s": best_of(fwd, repeats),
        }
        if backend != "fla_recurrent":
            leaves = [t.detach().clone().requires_grad_(True) for t in xs]

            def fwd_bwd(backend: str = backend, leaves: list = leaves) -> None:
                o, _ = gated_delta_rule(*leaves, initial_state=h0, backend=backend)
                o.float().square().mean().backward()

            row["forward_backward_s"] = best_of(fwd_bwd, repeats)
        rows.append(row)
    # decode: one token from a state
    decode_paths = [("recurrent", torch.float32)] + ([("fla_recurrent", bf16)] if fla_ok else [])
    with torch.no_grad():
        ref1, _ = gated_delta_rule(
            q[:, :1], k[:, :1], v[:, :1], gate[:, :1], beta[:, :1], initial_state=h0, backend="recurrent"
        )
        for backend, dtype in decode_paths:
            xs = [t[:, :1].to(dtype) for t in (q, k, v)] + [gate[:, :1], beta[:, :1]]
            step = lambda backend=backend, xs=xs: gated_delta_rule(*xs, initial_state=h0, backend=backend)  # noqa: E731
            rows.append(
                {
                    "op": "gated_delta_rule decode",
                    "backend": backend,
                    "dtype": str(dtype)[6:],
                    "T": 1,
                    "error": rel_err(step()[0], ref1),
                    "forward_s": best_of(step, repeats * 10),
                }
            )

    # dynamic convolution over the Jet layer's values (D = H * V channels, W = 4)
    D, W = H * V, 4
    x, ker, c0 = rnd(B, T, D), rnd(B, T, D, W) * 0.5, rnd(B, D, W)
    with torch.no_grad():
        ref_y, _ = dynamic_conv(x, ker, initial_state=c0, backend="torch")
        ref_step, _ = dynamic_conv_step(x[:, 0], ker[:, 0], c0, backend="torch")
    conv_paths = ["torch"] + (["triton"] if cuda_ok and module_available("triton") else [])
    for backend in conv_paths:
        fwd = lambda backend=backend: dynamic_conv(x, ker, initial_state=c0, backend=backend)  # noqa: E731
        with torch.no_grad():
            y, _ = fwd()
            row = {
                "op": "dynamic_conv",
                "backend": backend,
                "dtype": "float32",
                "T": T,
                "error": rel_err(y, ref_y),
                "forward_s": best_of(fwd, repeats),
            }
        xl, kl = x.clone().requires_grad_(True), ker.clone().requires_grad_(True)

        def conv_bwd(backend: str = backend, xl=xl, kl=kl) -> None:  # noqa: ANN001
            y, _ = dynamic_conv(xl, kl, initial_state=c0, backend=backend)
            y.square().mean().backward()

        row["forward_backward_s"] = best_of(conv_bwd, repeats)
        rows.append(row)
        with torch.no_grad():
            st = lambda backend=backend: dynamic_conv_step(x[:, 0], ker[:, 0], c0, backend=backend)  # noqa: E731
            rows.append(
                {
                    "op": "dynamic_conv_step",
                    "backend": backend,
                    "dtype": "float32",
                    "T": 1,
                    "error": rel_err(st()[0], ref_step),
                    "forward_s": best_of(st, repeats * 10),
                }
            )

    # window attention (Ouro: 16 heads x 128), prefill of a full window with backward, and a decode step
    Hq, Dh = (4, 16) if tiny else (16, 128)
    qa, ka, va = rnd(B, Hq, T, Dh), rnd(B, Hq, T, Dh), rnd(B, Hq, T, Dh)
    idx = torch.arange(T, device=dev)
    flash_ok = cuda_ok and module_available("flash_attn")
    if not flash_ok:
        out["note_attention"] = "flash-attn " + (
            "not checked: no CUDA" if not cuda_ok else "absent: SDPA only"
        )
    attn_dtype = bf16 if cuda_ok else torch.float32
    with torch.no_grad():
        ref_a = window_attention(qa, ka, va, idx, idx, backend="torch")
        ref_d = window_attention(qa[:, :, -1:], ka, va, idx[-1:], idx, backend="torch")
    for backend in ["sdpa"] + (["flash"] if flash_ok else []):
        qs, ks, vs = (t.to(attn_dtype) for t in (qa, ka, va))
        pre = partial(window_attention, qs, ks, vs, idx, idx, aligned=True, backend=backend)
        with torch.no_grad():
            row = {
                "op": "window_attention prefill",
                "backend": backend,
                "dtype": str(attn_dtype)[6:],
                "T": T,
                "error": rel_err(pre(), ref_a),
                "forward_s": best_of(pre, repeats),
            }
        leaves = [t.clone().requires_grad_(True) for t in (qs, ks, vs)]

        def attn_bwd(backend: str = backend, leaves: list = leaves) -> None:
            window_attention(
                *leaves, idx, idx, aligned=True, backend=backend
            ).float().square().mean().backward()

        row["forward_backward_s"] = best_of(attn_bwd, repeats)
        rows.append(row)
        with torch.no_grad():
            dec = partial(
                window_attention, qs[:, :, -1:], ks, vs, idx[-1:], idx, aligned=True, backend=backend
            )
            rows.append(
                {
                    "op": "window_attention decode",
                    "backend": backend,
                    "dtype": str(attn_dtype)[6:],
                    "T": 1,
                    "error": rel_err(dec(), ref_d),
                    "forward_s": best_of(dec, repeats * 10),
                }
            )
    return out


def _hybrid(args: argparse.Namespace, window: int):
    """An Ouro-1.4B-shaped sleep hybrid with random weights, laid out as `sleepify convert` with the
    models/ouro-1.4b recipe lays it out (6 Jet layers after blocks 3, 7, ..., 23; whole stack looped)."""
    from transformers import AutoConfig

    import sleepify

    sleepify.register_models()
    from sleepify.config import load_recipe
    from sleepify.models.hybrid import SleepHybridForCausalLM
    from sleepify.stages.convert import build_hybrid_config

    base = dict(TINY_OURO if args.tiny else OURO_1_4B)
    base_config = AutoConfig.for_model(**base)
    overrides = [f"sleep.window={window}"]
    if args.tiny:
        overrides += [
            "conversion.jet_layers=[1,3]",
            "conversion.jet.num_heads=2",
            "conversion.jet.head_dim=16",
        ]
    recipe = load_recipe(["models/ouro-1.4b"], overrides).recipe
    return SleepHybridForCausalLM(build_hybrid_config(base_config, recipe))


def step_train(args: argparse.Namespace) -> dict:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    L = 16 if args.tiny else 2000
    passes = [1] if args.quick else [1, 4]
    repeats = 1 if (args.tiny or args.quick) else 2
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = _hybrid(args, L).train()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    notes = []
    try:
        from sleepify.config.schema import TrainSection
        from sleepify.training.optim import MuonAdamW

        optim = MuonAdamW(model, TrainSection())
        optimizer = "Muon + AdamW (sleepify.training.optim)"
    except ImportError as err:
        optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
        optimizer = "torch AdamW"
        notes.append(f"Muon unavailable ({err}); AdamW instead")
    B, T = 1, 2 * L
    ids = torch.randint(4, model.config.vocab_size, (B, T), device=dev)
    loss_mask = torch.zeros_like(ids)
    # token i is a target of the prediction at i - 1: from L + 1 on, only the second window predicts
    # scored tokens (awake); the first sleeps
    loss_mask[:, L + 1 :] = 1
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    wake = model.config.wake_passes
    rows = []
    for n in passes:

        def step(n: int = n) -> None:
            optim.zero_grad()
            with autocast:
                out = model(ids, loss_mask=loss_mask, sleep_passes=n, checkpoint_windows=True, logits="none")
            # the slept window runs N x wake_passes passes (Ouro: wake_passes = total_ut_steps = 4)
            assert out.window_passes == [n * wake, wake], out.window_passes
            out.loss.backward()
            optim.step()

        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = best_of(step, repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
        rows.append({"N": n, "step_s": seconds, "tokens_per_s": B * T / seconds, "peak_gib": peak})
    result = {
        "device": dev,
        "parameters": n_params,
        "build_s": build_s,
        "optimizer": optimizer,
        "B": B,
        "T": T,
        "L": L,
        "precision": "bf16 autocast, fp32 weights" if dev == "cuda" else "fp32",
        "rows": rows,
        "notes": notes,
    }
    if len(rows) > 1:
        n = rows[-1]["N"]
        ratio = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]
        result["ratio"] = {
            "measured": ratio,
            "paper_1_over_N": 1 / n,
            "work_model_2_over_N_plus_1": 2 / (n + 1),
        }
    return result


def _decode(args: argparse.Namespace, compile: bool) -> dict:
    import torch

    from sleepify.stages.bench import decode_latency

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    L = 16 if args.tiny else 2000
    contexts = [64, 256] if args.tiny else ([1024] if args.quick else [1024, 16384])
    steps = 4 if args.tiny else (16 if args.quick else 32)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):
        model = _hybrid(args, L).to(dtype).eval()
    decode_latency(model, [min(contexts[0], L) + 1], 2, 1024, lambda _m: None, compile)  # warm-up
    t0 = time.perf_counter()
    sleepify_runs, base_runs, compiled = decode_latency(
        model, contexts, steps, 1024, lambda _m: None, compile
    )
    rows = []
    for i, c in enumerate(contexts):
        row = {
            "context": c,
            "sleepify_ms": 1e3 * sleepify_runs[i]["median_s"],
            "base_ms": 1e3 * base_runs[i]["median_s"],
            "sleepify_over_base": sleepify_runs[i]["median_s"] / base_runs[i]["median_s"],
            "sleepify_state_mib": sleepify_runs[i]["state_bytes"] / 2**20,
            "base_cache_mib": base_runs[i]["state_bytes"] / 2**20,
            "sleepify_prefill_s": sleepify_runs[i]["prefill_s"],
            "base_prefill_s": base_runs[i]["prefill_s"],
        }
        if compiled is not None:
            row["compiled_ms"] = 1e3 * compiled[i]["median_s"]
            row["compiled_over_eager"] = compiled[i]["median_s"] / sleepify_runs[i]["median_s"]
        rows.append(row)
    return {
        "device": dev,
        "dtype": str(dtype)[6:],
        "window": L,
        "steps": steps,
        "rows": rows,
        "measure_s": time.perf_counter() - t0,
    }


def step_decode(args: argparse.Namespace) -> dict:
    return _decode(args, compile=False)


def step_scale(args: argparse.Namespace) -> dict:
    """benchmarks/bench_scale.py: the whole CLI chain at Ouro-1.4B's size (toy shapes with --tiny)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_scale

    return bench_scale.main(["--model", "ouro-1.4b", *(["--toy"] if args.tiny else [])])


def step_compile(args: argparse.Namespace) -> dict:
    return _decode(args, compile=True)


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    budget_s: int  # full suite, on one H100/H200
    quick_budget_s: int  # --quick (0: not part of --quick)
    gpu: bool  # skipped without CUDA (unless --tiny)
    run: Callable[[argparse.Namespace], dict]
    alone: bool = False  # not in the suite: run alone by its own flag (--scale)


STEPS = (
    Step("doctor", "sleepify doctor: backends and self-check", 60, 40, False, step_doctor),
    Step("pytest", "pytest -m cuda (CUDA-only tests, compiled Triton)", 150, 30, True, step_pytest),
    Step("kernels", "kernel parity + speed at Ouro-1.4B shapes", 60, 25, True, step_kernels),
    Step("train", "bf16 train step, Ouro-1.4B-shaped hybrid, N=1,4, L=2000", 100, 30, True, step_train),
    Step("decode", "decode latency at 1k / 16k vs base with full KV cache", 45, 15, True, step_decode),
    Step("compile", "decode latency with torch.compile", 65, 0, True, step_compile),
    Step("scale", "convert -> train -> export -> generate at 1.4B, L=2000", 540, 0, True, step_scale, True),
)
TOTAL_LIMIT_S = 480  # the target: the whole suite in under 8 minutes
HARD_FACTOR = 1.5  # a step is killed after HARD_FACTOR x its budget ...
DEADLINE_S = 560  # ... or when the suite reaches this (a device call may run 600 s), whichever is first


def plan(quick: bool, scale: bool = False) -> str:
    steps = [s for s in STEPS if s.alone == scale and (scale or not quick or s.quick_budget_s)]
    lines = [
        f"gpu_check plan ({'--quick' if quick else 'full'}): each step is its own process, killed after "
        f"{HARD_FACTOR:g}x its budget",
        "",
        "| # | step | what | budget (s) | on CPU |",
        "|---|---|---|---:|---|",
    ]
    total = 0
    for i, s in enumerate(steps):
        budget = s.quick_budget_s if quick else s.budget_s
        total += budget
        lines.append(f"| {i} | {s.name} | {s.title} | {budget} | {'skipped' if s.gpu else 'runs'} |")
    lines += [
        "",
        f"total budget: {total} s (target < {TOTAL_LIMIT_S} s). A step is killed at {HARD_FACTOR:g}x its "
        f"budget and the suite stops at {DEADLINE_S} s (--deadline); later steps are reported as not run.",
        "On a GPU machine without network: copy the tree with .gpu-wheels/ (--build-wheels makes it), then",
        "PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR  (DIR/report.md, DIR/report.json)",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# driver


def run_step_in_process(args: argparse.Namespace) -> None:
    step = next(s for s in STEPS if s.name == args.step)
    try:
        data = step.run(args)
        status = "ok" if data.get("ok", True) else "fail"
    except Exception as err:  # the report shows what failed and how
        import traceback

        data, status = (
            {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]},
            "fail",
        )
    Path(args.result).write_text(json.dumps({"status": status, **data}, default=str))


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _run_killable(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (pytest's children too)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1))
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        return None, output


def run_suite(args: argparse.Namespace, save: Callable[[dict], None] = lambda _r: None) -> dict:
    """Run the steps one process each; ``save`` gets the report after every step (a killed session keeps
    what finished)."""
    has_cuda = cuda_available()
    scale = getattr(args, "scale", False)
    steps = [s for s in STEPS if s.alone == scale and (scale or not args.quick or s.quick_budget_s)]
    if args.steps:
        wanted = args.steps.split(",")
        steps = [s for s in steps if s.name in wanted]
    started = time.perf_counter()
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.node(),
        "python": platform.python_version(),
        "cuda": has_cuda,
        "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
        "wheels": args.wheels_used,
        "total_s": 0.0,
        "ok": True,
        "steps": [],
    }
    for s in steps:
        budget = s.quick_budget_s if args.quick else s.budget_s
        left = args.deadline - (time.perf_counter() - started)
        base = {"step": s.name, "title": s.title, "budget_s": budget, "seconds": 0}
        if s.gpu and not has_cuda and not args.tiny:
            note = (
                "no CUDA device: GPU step skipped (run it on a CUDA machine; --tiny runs toy shapes on CPU)"
            )
            data = {**base, "status": "skipped", "note": note}
        elif left < 10:
            data = {
                **base,
                "status": "not run",
                "note": f"the suite's deadline ({args.deadline} s) was reached",
            }
        else:
            print(f"[{s.name}] {s.title} (budget {budget} s) ...", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                result_file = Path(tmp) / "result.json"
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--step",
                    s.name,
                    "--result",
                    str(result_file),
                ]
                cmd += (["--quick"] if args.quick else []) + (["--tiny"] if args.tiny else [])
                limit = min(HARD_FACTOR * budget, left)
                t0 = time.perf_counter()
                code, output = _run_killable(cmd, limit)
                seconds = time.perf_counter() - t0
                if result_file.exists():
                    data = json.loads(result_file.read_text())
                elif code is None:
                    data = {
                        "status": "fail",
                        "error": f"killed after {limit:.0f} s",
                        "stderr": output[-4000:],
                    }
                else:
                    data = {"status": "fail", "error": f"exit code {code}", "stderr": output[-4000:]}
            data = {**base, "seconds": round(seconds, 1), **data}
            if seconds > budget:
                data["over_budget"] = True
        report["steps"].append(data)
        report["total_s"] = round(time.perf_counter() - started, 1)
        report["ok"] = all(r["status"] in ("ok", "skipped") for r in report["steps"])
        print(f"[{s.name}] {data['status']} ({data['seconds']} s)", flush=True)
        save(report)
    return report


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(report: dict) -> str:
    lines = [
        f"# gpu_check ({report['mode']}) — {report['when']}",
        "",
        f"python {report['python']}, CUDA {'yes' if report['cuda'] else 'no'}, total {report['total_s']} s, "
        f"{'all steps passed' if report['ok'] else 'FAILURES'}",
        "",
        "| step | status | seconds | budget |",
        "|---|---|---:|---:|",
    ]
    for r in report["steps"]:
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {r['budget_s']} |")
    for r in report["steps"]:
        lines += ["", f"## {r['step']}: {r['title']}", ""]
        if r.get("note"):
            lines.append(r["note"])
        if r.get("error"):
            lines += [
                f"**error**: {r['error']}",
                "",
                "```",
                (r.get("traceback") or r.get("stderr") or "")[-2000:],
                "```",
            ]
        if r.get("summary"):
            lines.append(f"pytest: {r['summary']}")
            lines += [f"- {f}" for f in r.get("failures", [])]
        for key in ("note_gdr", "note_attention"):
            if r.get(key):
                lines.append(f"- {r[key]}")
        table = r.get("rows")
        if table:
            keys = list(dict.fromkeys(k for row in table for k in row))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in table]
        for key in ("ratio", "auto", "parameters", "optimizer", "precision", "notes", "failed_checks"):
            if r.get(key):
                lines.append(
                    f"- {key}: {json.dumps(r[key], default=str) if not isinstance(r[key], str) else r[key]}"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="print the steps and their budgets; run nothing")
    parser.add_argument("--quick", action="store_true", help="the ~2-minute subset")
    parser.add_argument(
        "--tiny", action="store_true", help="toy shapes, GPU steps on CPU too (tests the script)"
    )
    parser.add_argument("--steps", help="comma-separated subset of step names")
    parser.add_argument("--scale", action="store_true", help="run only the `scale` step (its own budget)")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-check", help="folder for report.json/.md")
    parser.add_argument("--build-wheels", action="store_true", help="download the wheels into .gpu-wheels/")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="stop the suite after this many s")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan:
        print(plan(args.quick, args.scale))
        return
    if args.build_wheels:
        build_wheels()
        return
    sys.path.insert(0, str(ROOT))  # run from the source tree
    args.wheels_used = use_wheels()
    if args.step:
        run_step_in_process(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "report.md").write_text(markdown(report))

    report = run_suite(args, save)
    save(report)
    print(f"report: {args.out / 'report.md'} ({'ok' if report['ok'] else 'FAILURES'}, {report['total_s']} s)")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
