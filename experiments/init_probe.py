"""Probe a from-scratch model at initialisation: does memory of the first window survive N sleep passes?

For each initialisation seed and forget-gate init (``conversion.decay_init``), this builds the built-in model
exactly as ``sleepify convert builtin:NAME -r RECIPE -o train.seed=SEED`` does (no training) and measures,
on Rule 110 rows (four 24-token states, then the answer window; L = 24, hard eviction):

- ``decay``: the per-token decay ``exp(-A * softplus(dt_bias))`` of every GDN head (``a_proj x`` = 0);
- ``imprint``: after the four state windows have been slept with N passes, the relative change of the
  fast weights S (all SSM layers) when only the first window's bits are redrawn,
  ``||S(x) - S(x')|| / ||S(x)||`` (0 = the first window left no trace);
- ``grad_first`` / ``grad_last``: the mean norm of the answer loss's gradient reaching the first / last
  state window's token embeddings.

Usage (seconds per row on one core)::

    PYTHONPATH=. python experiments/init_probe.py --seeds 0 1 2 3 4 --decay-init fla spread \\
        --out docs/figures/init-probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import sleepify  # noqa: F401  (registers the model types)
from sleepify.config import load_recipe
from sleepify.data.rule110 import make_rows
from sleepify.data.tokenizer import build_char_tokenizer
from sleepify.layers.gated_deltanet import GatedDeltaNet
from sleepify.layers.jet_block import JetBlock
from sleepify.models.hybrid import SleepHybridForCausalLM
from sleepify.models.scratch.builtin import get_builtin
from sleepify.sleep import SleepState, run_window
from sleepify.stages.convert import build_hybrid_config


def build(
    model: str, recipe: str, seed: int, decay_init: str, conv_state: str, ssm: dict | None = None
) -> SleepHybridForCausalLM:
    overrides = [
        f"train.seed={seed}",
        f"conversion.decay_init={decay_init}",
        f"sleep.conv_state={conv_state}",
    ]
    rec = load_recipe([recipe], overrides).recipe
    base = get_builtin(model).build_config()
    base.ssm["decay_init"] = decay_init
    base.ssm.update(ssm or {})
    config = build_hybrid_config(base, rec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SleepHybridForCausalLM(config).eval()


def rows(n: int, t: int, seed: int) -> dict[str, torch.Tensor]:
    tok = build_char_tokenizer()
    r = make_rows(np.random.default_rng(seed), n, [t], tok)
    cols = ("input_ids", "loss_mask")
    return {k: torch.as_tensor(np.asarray(r.columns[k]), dtype=torch.long) for k in cols}


def decays(model: torch.nn.Module) -> list[float]:
    out = []
    for m in model.modules():
        if isinstance(m, (GatedDeltaNet, JetBlock)):
            rate = m.A_log.detach().double().exp() * torch.nn.functional.softplus(m.dt_bias.detach().double())
            out += torch.exp(-rate).tolist()
    return out


def states_after(model: SleepHybridForCausalLM, ids: torch.Tensor, passes: int, windows: int) -> torch.Tensor:
    stack = model.sleep_stack()
    settings = model.sleep_settings(passes=passes)
    L = settings.window
    state = SleepState()
    rows_sleep = torch.ones(ids.shape[0], dtype=torch.bool)
    for w in range(windows):
        _, _, state, _ = run_window(stack, settings, ids[:, w * L : (w + 1) * L], None, state, rows_sleep)
    return torch.cat([s.recurrent.flatten(1) for _, s in sorted(state.mixers.items())], dim=1)


def probe(model: SleepHybridForCausalLM, batch: dict[str, torch.Tensor], passes: int) -> dict[str, float]:
    ids = batch["input_ids"]
    L = model.config.sleep_window
    with torch.no_grad():
        s = states_after(model, ids, passes, 4)
        other = ids.clone()
        other[:, :L] = torch.where(torch.rand(ids.shape[0], L) < 0.5, ids[:, :L].flip(0), ids[:, :L])
        changed = (other[:, :L] != ids[:, :L]).any(1)
        s2 = states_after(model, other, passes, 4)
    imprint = ((s - s2).norm(dim=1)[changed] / s.norm(dim=1)[changed].clamp_min(1e-30)).mean().item()

    grads: list[torch.Tensor] = []

    def keep(_m, _i, out):  # noqa: ANN001, ANN202
        out.retain_grad()
        grads.append(out)

    handle = model.get_input_embeddings().register_forward_hook(keep)
    try:
        out = model(ids, loss_mask=batch["loss_mask"], sleep_passes=passes, logits="none")
        out.loss.backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    first, last = grads[0].grad, grads[3].grad  # one embedding call per window
    return {
        "imprint": imprint,
        "grad_first": first.norm(dim=-1).mean().item(),
        "grad_last": last.norm(dim=-1).mean().item(),
        "loss": out.loss.item(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gdn-hybrid-4-small")
    p.add_argument("--recipe", default="repro/rule110-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--decay-init", nargs="+", default=["fla", "spread"])
    p.add_argument("--conv-state", default="reset")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--t", type=int, default=2)
    p.add_argument("--ssm-heads", type=int, help="override the model's SSM heads (head counts at small d)")
    p.add_argument("--ssm-head-dim", type=int, help="override the model's SSM head dimension")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    batch = rows(args.rows, args.t, 1234)
    results = []
    print("init    seed  decay (per head)                        N  imprint    grad_first grad_last")
    for kind in args.decay_init:
        for seed in args.seeds:
            ssm = {k: v for k, v in (("num_heads", args.ssm_heads), ("head_dim", args.ssm_head_dim)) if v}
            model = build(args.model, args.recipe, seed, kind, args.conv_state, ssm)
            d = decays(model)
            for n in args.passes:
                torch.manual_seed(0)
                r = {"decay_init": kind, "seed": seed, "conv_state": args.conv_state, "passes": n, "decay": d}
                r["ssm"] = {k: model.base.config.ssm[k] for k in ("num_heads", "head_dim")}
                r.update(probe(model, batch, n))
                results.append(r)
                ds = " ".join(f"{x:.4f}" for x in d)
                print(
                    f"{kind:7s} {seed:4d}  {ds:38s} {n:2d}  {r['imprint']:.3e}  {r['grad_first']:.3e}  "
                    f"{r['grad_last']:.3e}",
                    flush=True,
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))
    bad = [r for r in results if not math.isfinite(r["imprint"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
