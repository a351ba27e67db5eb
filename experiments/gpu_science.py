"""Paper-scale Rule 110 on one GPU in 7 minutes (issue 28): N = 1, 2, 4 at depth t* and 2 t*.

The paper's own model and setup (§4, §6.1): ``builtin:gdn-hybrid-4`` (attention -> GDN -> attention -> GDN,
d = 256) converted with its shipped recipe ``scratch/gdn-hybrid-4`` (L = 24, one Rule 110 state per window,
hard eviction, Algorithm 1's defaults, batch 512, Muon 2e-3 / AdamW 5e-5, cosine), trained from the same
initial weights (init seed) on the same rows in the same order (data seed) for every N, each run for the
same number of optimizer steps S: as many as fit the budget, measured on the machine itself.

    PYTHONPATH=. python3 experiments/gpu_science.py --plan               # phases and budgets; runs nothing
    PYTHONPATH=. python3 experiments/gpu_science.py --out gpu-science    # right after benchmarks/gpu_check.py
    PYTHONPATH=. python3 experiments/gpu_science.py --tiny --out /tmp/s  # toy shapes, any device (the test)

Phases (``--plan``): setup (imports, the carried wheels of ``benchmarks/gpu_check.py``, the data, one
convert); calibration (one warm-up and ``CALIBRATION_STEPS`` timed optimizer steps per N on the converted
model); training (S from the calibration: the training budget over the summed step times of every run);
evaluation (exact match and answer loss on the test rows, with the run's N); writing. A training run
that reaches the training phase's deadline (the calibration was off) stops there and its row says
``"cut": true`` with the steps it made; the runs after it are skipped.

It needs only what ``benchmarks/gpu_check.py`` needs (python3 with torch, transformers, triton; fla and
pydantic from ``.gpu-wheels/``): no ``datasets`` or ``click`` (the data is made in memory with
``sleepify.data.rule110``); matplotlib is optional (without it no PNG, the curves are in ``curves.jsonl``).

Writes into ``--out`` after every run: ``results.jsonl`` (rows in the format of
``experiments/rule110_seeds.py``, plus ``model``, ``batch_size``, ``tokens``, ``device``, ``cut``),
``results.md``, ``curves.jsonl`` (step, loss per run), ``plan.json`` (the calibration and S),
``runs/tT-NN/metrics.jsonl`` and, with matplotlib, ``rule110-gpu-tT-loss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 420  # 7 minutes on one H100/H200, everything included
# (phase, seconds, what): the budget of each phase; the training phase gets what the others leave
PHASES = [
    ("setup", 45, "imports, carried wheels, Rule 110 rows in memory, one convert (init seed)"),
    ("calibrate", 40, "per N: one warm-up step (kernel compile / autotune) + timed steps"),
    ("train", 280, "every (t, N) run for the same S steps; S = train budget / summed step times"),
    ("eval", 30, "exact match + answer loss on the test rows, each run with its N"),
    ("write", 5, "rows, curves, plots"),
]
MARGIN_S = BUDGET_S - sum(s for _, s, _ in PHASES)
T_STAR = 4  # default depth t*; --t overrides (the runs use t* and 2 t*)
PASSES = (1, 2, 4)
CALIBRATION_STEPS = 3
PAPER = {"model": "builtin:gdn-hybrid-4", "recipe": "scratch/gdn-hybrid-4", "batch": 512, "n_test": 1000}
TINY = {"model": "builtin:gdn-hybrid-4-tiny", "recipe": "scratch/gdn-hybrid-4-tiny", "batch": 8, "n_test": 16}


class OutOfTime(Exception):
    """Raised inside a training step once the training phase's deadline has passed."""


def plan_text(ts: list[int]) -> str:
    runs = len(ts) * len(PASSES)
    lines = [f"gpu_science: Rule 110 at t = {', '.join(map(str, ts))}, N = 1, 2, 4 ({runs} runs), budget "
             f"{BUDGET_S} s on one GPU"]  # fmt: skip
    lines += [f"  {name:<10} {sec:>4} s  {what}" for name, sec, what in PHASES]
    lines.append(f"  {'margin':<10} {MARGIN_S:>4} s")
    lines.append(
        f"  steps per run S = floor({PHASES[2][1]} s / (1.1 x sum over the {runs} runs of the calibrated "
        "step time of their N)), the same S for every run; batch 512 rows of about 100 tokens"
    )
    return "\n".join(lines)


class RowSet:
    """Rule 110 rows (numpy columns) as the sequence of row dicts ``sleepify.training.loop.train`` reads."""

    def __init__(self, rows) -> None:  # noqa: ANN001  (sleepify.data.common.Rows)
        self.ids = rows.columns["input_ids"]
        self.loss = rows.columns["loss_mask"]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "loss_mask": self.loss[i]}


def make_data(t: int, seed: int, n_train: int, n_test: int) -> tuple[RowSet, RowSet]:
    from sleepify.data.rule110 import generate

    splits, _ = generate(n_train, n_test, [t], seed, progress=False)
    return RowSet(splits["train"]), RowSet(splits["test"])


def to_device(rows: RowSet, idx: range, device) -> dict:  # noqa: ANN001
    import torch

    ids = torch.as_tensor(rows.ids[idx.start : idx.stop], dtype=torch.long, device=device)
    loss = torch.as_tensor(rows.loss[idx.start : idx.stop], dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss}


def configure(model, passes: int) -> None:  # noqa: ANN001
    """The sleep settings of the recipe on the loaded model, as ``sleepify train`` sets them."""
    cfg = model.config
    cfg.sleep_window, cfg.sleep_passes, cfg.eviction, cfg.conv_state = 24, passes, "hard", "reset"


def load(convert_dir: Path, device):  # noqa: ANN001, ANN201
    from transformers import AutoModelForCausalLM

    import sleepify

    sleepify.register_models()
    return AutoModelForCausalLM.from_pretrained(convert_dir, dtype="float32").to(device)


def calibrate(convert_dir: Path, rows: RowSet, rec, device) -> dict[int, float]:  # noqa: ANN001
    """Seconds per optimizer step for each N (best of the timed steps, after a warm-up step): the work of
    one step of ``sleepify.training.loop.train`` (collate, forward, backward, clipping, Muon/AdamW step)."""
    import torch

    from sleepify.training.data import collate
    from sleepify.training.optim import MuonAdamW

    seconds = {}
    for n in PASSES:
        model = load(convert_dir, device).train()
        configure(model, n)
        optim = MuonAdamW(model, rec.train)
        times = []
        for i in range(1 + CALIBRATION_STEPS):
            t0 = time.perf_counter()
            batch = {
                k: v.to(device) for k, v in collate([rows[j] for j in range(rec.train.batch_size)], 0).items()
            }
            with autocast(device):
                loss = model(**batch, logits="none", checkpoint_windows=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            optim.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        seconds[n] = min(times)
        del model, optim
    return seconds


def autocast(device):  # noqa: ANN001, ANN201
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def evaluate(model, rows: RowSet, passes: int, device, batch: int) -> tuple[float, float]:  # noqa: ANN001
    """Exact match (all four answer bits of a row right) and mean answer-token loss, with ``passes``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    correct, loss_sum, tokens = 0, 0.0, 0
    n_ans = int(rows.loss[0].sum())
    with torch.no_grad(), autocast(device):
        for start in range(0, len(rows), batch):
            b = to_device(rows, range(start, min(len(rows), start + batch)), device)
            out = model(**b, sleep_passes=passes, logits_to_keep=n_ans + 1)
            logits = out.logits[:, -n_ans - 1 : -1].float()  # the positions that predict the answer tokens
            targets = b["input_ids"][:, -n_ans:]
            correct += int((logits.argmax(-1) == targets).all(-1).sum())
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
            tokens += targets.numel()
    return correct / len(rows), loss_sum / tokens


def steps_per_run(step_s: dict[int, float], ts: list[int], train_s: float, lo: int, hi: int) -> int:
    per_step = 1.1 * len(ts) * sum(step_s[n] for n in PASSES)  # 10 %: logging, the loop's own work
    return max(lo, min(hi, math.floor(train_s / per_step)))


def write_outputs(out: Path, results: list[dict], curves: list[dict]) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    from rule110_seeds import pair_table

    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (out / "curves.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curves))
    lines = [
        "| t | N | steps | tokens | exact match | answer loss | leaves plateau | solved | train s | cut |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['t']} | {r['arm']} | {r['steps']} | {r['tokens']:,} | {r['exact_match']:.3f} | "
            f"{r['answer_loss']:.4f} | {r['left_plateau_step']} | {r['solved_step']} | {r['train_wall_s']} | "
            f"{'yes' if r['cut'] else 'no'} |"
        )
    (out / "results.md").write_text("\n".join([*lines, "", *pair_table(results, [str(n) for n in PASSES])]))


def plot(out: Path, ts: list[int], done: list[tuple[int, int, Path]]) -> list[str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    sys.path.insert(0, str(ROOT / "experiments"))
    import plot_curves

    pngs = []
    for t in ts:
        runs = [f"{run}=N={n}" for tt, n, run in done if tt == t]
        if runs:
            png = out / f"rule110-gpu-t{t}-loss.png"
            plot_curves.main(str(png), runs, title=f"Rule 110, t = {t}, paper model (d = 256), batch 512")
            pngs.append(png.name)
    return pngs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", action="store_true", help="print the phases and budgets; run nothing")
    p.add_argument("--out", type=Path, default=ROOT / "gpu-science")
    p.add_argument("--t", type=int, default=T_STAR, help=f"t*: the runs use t* and 2 t* (default {T_STAR})")
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=200_000, help="training rows (repeated if S needs more)")
    p.add_argument("--max-steps", type=int, default=2000, help="cap on S")
    p.add_argument("--min-steps", type=int, default=20, help="floor on S")
    p.add_argument(
        "--tiny", action="store_true", help="toy shapes (d = 32, batch 8, S <= 2): tests the script"
    )
    args = p.parse_args(argv)
    ts = [args.t, 2 * args.t]
    if args.plan:
        print(plan_text(ts))
        return 0
    started = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import use_wheels

    wheels = use_wheels()
    import torch

    import sleepify
    from sleepify.config import load_recipe
    from sleepify.training.loop import train

    sys.path.insert(0, str(ROOT / "experiments"))
    from rule110_seeds import PLATEAU, SOLVED, stays_below

    shape = TINY if args.tiny else PAPER
    n_train = 64 if args.tiny else args.n_train
    max_steps = min(args.max_steps, 2) if args.tiny else args.max_steps
    min_steps = min(args.min_steps, max_steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    convert_dir = out / f"convert-i{args.init_seed}"
    if not (convert_dir / "config.json").is_file():
        sleepify.convert(shape["model"], recipe=shape["recipe"], overrides=[f"train.seed={args.init_seed}"],
                         out=convert_dir, overwrite=True)  # fmt: skip
    data = {t: make_data(t, args.data_seed, n_train, shape["n_test"]) for t in ts}
    setup_s = time.perf_counter() - started

    base = [f"train.batch_size={shape['batch']}", f"train.seed={args.data_seed}", "train.tensorboard=false",
            "train.precision=bf16", "sleep.window=24", "sleep.eviction=hard"]  # fmt: skip
    rec = load_recipe([shape["recipe"]], base).recipe
    t0 = time.perf_counter()
    step_s = calibrate(convert_dir, data[ts[0]][0], rec, device)
    calibrate_s = time.perf_counter() - t0
    train_budget = PHASES[2][1]
    steps = steps_per_run(step_s, ts, train_budget, min_steps, max_steps)
    log_every = max(1, steps // 40)
    overrides = [*base, f"train.steps={steps}", f"train.log_every={log_every}", "train.checkpoint_every=0",
                 f"train.schedule.warmup_steps={min(50, max(1, steps // 10))}"]  # fmt: skip
    rec = load_recipe([shape["recipe"]], overrides).recipe
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    plan = {"device": device_name, "wheels": wheels, "setup_s": round(setup_s, 1),
            "calibrate_s": round(calibrate_s, 1), "step_s": step_s, "steps": steps, "ts": ts,
            "batch_size": shape["batch"], "model": shape["model"], "recipe": shape["recipe"],
            "overrides": overrides}  # fmt: skip
    (out / "plan.json").write_text(json.dumps(plan, indent=2))
    print(f"calibrated on {device_name}: s/step {step_s}; S = {steps} steps per run", flush=True)

    deadline = time.perf_counter() + train_budget + 0.5 * MARGIN_S  # the training phase ends here
    results: list[dict] = []
    curves: list[dict] = []
    done: list[tuple[int, int, Path]] = []
    for t in ts:
        train_rows, test_rows = data[t]
        length = len(train_rows.ids[0])
        for n in PASSES:
            run = out / "runs" / f"t{t}-N{n}"
            if time.perf_counter() > deadline:
                print(f"t = {t}, N = {n}: skipped, the training phase's time is up", flush=True)
                continue
            model = load(convert_dir, device)
            configure(model, n)
            made = 0

            def loss_fn(m, batch):  # noqa: ANN001, ANN202
                nonlocal made
                if time.perf_counter() > deadline:
                    raise OutOfTime
                made += 1
                return m(**batch, logits="none", checkpoint_windows=False).loss

            if run.exists():  # a rerun starts the run afresh (no checkpoints are kept)
                import shutil

                shutil.rmtree(run)
            t_run = time.perf_counter()
            cut = False
            try:
                train(model, train_rows, rec.train, run, loss_fn=loss_fn, progress=False)
            except OutOfTime:
                cut = True
            wall = time.perf_counter() - t_run
            exact, loss = evaluate(model, test_rows, n, device, batch=min(500, shape["batch"]))
            metrics = run / "metrics.jsonl"
            logged = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            curves += [{"t": t, "N": n, "step": r["step"], "loss": r["loss"]} for r in logged if "loss" in r]
            results.append({
                "t": t, "init_seed": args.init_seed, "data_seed": args.data_seed, "arm": str(n),
                "variant": "default", "exact_match": exact, "answer_loss": loss,
                "left_plateau_step": stays_below(metrics, PLATEAU),
                "solved_step": stays_below(metrics, SOLVED),
                "steps": made, "train_wall_s": round(wall, 1), "model": shape["model"].split(":")[1],
                "batch_size": shape["batch"], "tokens": made * shape["batch"] * length, "device": device_name,
                "cut": cut,
            })  # fmt: skip
            done.append((t, n, run))
            write_outputs(out, results, curves)
            print(json.dumps(results[-1]), flush=True)
            del model
    pngs = plot(out, ts, done)
    total = time.perf_counter() - started
    plan.update(total_s=round(total, 1), pngs=pngs)
    (out / "plan.json").write_text(json.dumps(plan, indent=2))
    print(f"gpu_science: {len(results)} runs in {total:.0f} s (budget {BUDGET_S} s) -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
