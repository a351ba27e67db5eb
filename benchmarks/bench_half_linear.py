"""Half-precision products on this CPU: native bfloat16 against float32 products
(``sleepify.ops.float32_linear``) and plain float32, forward + backward of one Ouro-1.4B MLP projection;
and Muon's Newton-Schulz orthogonalisation of one matrix, torch's bfloat16 iteration against ours in
float32 (``sleepify.training.optim``).

Prints each path's time and the ratios, measured in one run. On a CPU without bf16 units (no AVX512-BF16 /
AMX) the native bfloat16 weight gradient falls to a slow path; ``runs.load_model`` then swaps the model's
``nn.Linear`` for ``Float32Linear`` (same bfloat16 weights and gradients, float32 products).

    python benchmarks/bench_half_linear.py [--rows 128] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sleepify.ops.float32_linear import cpu_has_half_units, float32_linear  # noqa: E402
from sleepify.training.optim import newton_schulz_float32  # noqa: E402


def timed(fn, x: torch.Tensor, w: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Seconds of one forward and of one backward (mean of ``repeats`` after a warm-up)."""
    fwd = bwd = 0.0
    for i in range(repeats + 1):
        xi, wi = x.detach().requires_grad_(), w.detach().requires_grad_()
        t = time.perf_counter()
        y = fn(xi, wi)
        t1 = time.perf_counter()
        y.backward(torch.ones_like(y))
        t2 = time.perf_counter()
        if i:  # the first call warms up
            fwd, bwd = fwd + (t1 - t) / repeats, bwd + (t2 - t1) / repeats
    return fwd, bwd


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=128, help="tokens in the batch (one window of L = 128)")
    ap.add_argument("--hidden", type=int, default=2048, help="Ouro-1.4B: 2048")
    ap.add_argument("--out-features", type=int, default=5632, help="Ouro-1.4B's intermediate size")
    ap.add_argument("--ns-side", type=int, default=512, help="Newton-Schulz matrix side (bf16 is slow)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, args.hidden, generator=g)
    w = torch.randn(args.out_features, args.hidden, generator=g) / args.hidden**0.5
    bf_x, bf_w = x.bfloat16(), w.bfloat16()
    paths = {
        "float32": (F.linear, x, w),
        "bfloat16 native": (F.linear, bf_x, bf_w),
        "bfloat16 weights, float32 products": (float32_linear, bf_x, bf_w),
    }
    flops = 2 * args.rows * args.hidden * args.out_features
    res: dict = {"cpu_has_bf16_units": cpu_has_half_units(), "threads": args.threads, "shape": vars(args)}
    print(f"CPU bf16 units: {res['cpu_has_bf16_units']}; {args.rows} x {args.hidden} -> {args.out_features}, "
          f"{args.threads} threads")  # fmt: skip
    for name, (fn, xi, wi) in paths.items():
        fwd, bwd = timed(fn, xi, wi, args.repeats)
        res[name] = {"forward_s": fwd, "backward_s": bwd, "forward_gflops": flops / fwd / 1e9}
        print(f"{name:<36} forward {fwd * 1e3:9.1f} ms   backward {bwd * 1e3:10.1f} ms")
    native, ours = res["bfloat16 native"], res["bfloat16 weights, float32 products"]
    res["speedup_forward"] = native["forward_s"] / ours["forward_s"]
    res["speedup_backward"] = native["backward_s"] / ours["backward_s"]
    res["vs_float32_step"] = (ours["forward_s"] + ours["backward_s"]) / (
        res["float32"]["forward_s"] + res["float32"]["backward_s"]
    )
    print(f"float32 products over native bfloat16: forward {res['speedup_forward']:.1f}x faster, "
          f"backward {res['speedup_backward']:.1f}x faster; a step costs {res['vs_float32_step']:.2f}x "
          "float32's")  # fmt: skip
    from torch.optim import _muon

    coeffs, m = (3.4445, -4.775, 2.0315), torch.randn(args.ns_side, args.ns_side, generator=g)
    ns_paths = {"torch bfloat16": _muon._zeropower_via_newtonschulz, "float32": newton_schulz_float32}
    for name, fn in ns_paths.items():
        fn(m, coeffs, 5, 1e-7)
        t = time.perf_counter()
        fn(m, coeffs, 5, 1e-7)
        res[f"newton_schulz {name}_s"] = time.perf_counter() - t
    ns_bf16, ns_f32 = res["newton_schulz torch bfloat16_s"], res["newton_schulz float32_s"]
    res["speedup_newton_schulz"] = ns_bf16 / ns_f32
    print(f"Muon Newton-Schulz, {args.ns_side}^2: torch bfloat16 {ns_bf16:.3f} s, float32 {ns_f32:.3f} s "
          f"({res['speedup_newton_schulz']:.1f}x)")  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
