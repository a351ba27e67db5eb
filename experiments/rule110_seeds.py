"""Rule 110 at CPU scale over several seeds: does the sleep effect survive a change of seed (issue 14)?

For every (initialisation seed, data seed) pair and every arm (N = 1, 2, 4 and the N = 2 -> 4 curriculum),
one run of the shipped CPU recipe (``recipes/repro/rule110-cpu.yaml``: d = 64, L = 24, hard eviction,
batches of 64 rows; the curriculum arm adds ``recipes/repro/rule110-cpu-curriculum.yaml``) for a budget
of ``--steps`` (default 500, the budget of the first grid in docs/results.md; the recipe's own is 1000):

    sleepify data rule110 --out OUT/data-tT-dD --t T --n-train 50000 --n-test 1000 --seed D
    sleepify convert builtin:gdn-hybrid-4-small --out OUT/convert-iI -r repro/rule110-cpu train.seed=I
    sleepify train OUT/convert-iI -r repro/rule110-cpu --N N --data OUT/data-tT-dD train.seed=D \\
        train.steps=S train.checkpoint_every=S/2 --out OUT/tT-iI-dD-N<N>[-sS]
    sleepify eval OUT/tT-iI-dD-N<N>/model --data OUT/data-tT-dD --out OUT/tT-iI-dD-N<N>/eval

So the initial weights depend on the init seed only (the same for every N and data seed) and the data and
its order on the data seed only (the same for every N). The pairs run in the given order and, within a
pair, the arms in the given order, one process at a time (``OMP_NUM_THREADS=1``), so every completed pair
is a full N comparison. Finished runs are skipped, so the script can be restarted. After every run it
rewrites ``OUT/results.jsonl``, ``OUT/results.md`` (per run and the mean / spread per arm) and
``OUT/results.png``. ``--summarise-only`` rewrites those from the finished runs without running anything.
``--steps S`` trains every arm for S steps (the same budget for every N; the curriculum switches at S / 2;
run names of budgets other than 500 get ``-sS``), ``--n-train`` / ``--n-test`` change the data size.

Usage::

    PYTHONPATH=. nohup python experiments/rule110_seeds.py --out runs/seeds --t 2 \\
        --pairs 0:0 1:1 2:0 0:1 1:0 2:1 --arms 1 2 4 curriculum > runs/seeds.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PLATEAU = 0.67  # a run has left the plateau at the first logged step from which the loss stays below this
SOLVED = 0.1  # ... and has solved the task from the first logged step its loss stays below this (~99 % exact)
RECIPE = "repro/rule110-cpu"
CURRICULUM = "repro/rule110-cpu-curriculum"
# The models (--model): the shipped 4-block d = 64 hybrid (the default), and the same hybrid with two
# blocks, attention -> GDN (issue 28: half the depth per pass, so one pass stops at a smaller Rule 110
# depth). The two-block model is not a built-in: ``--make-base`` writes it as a local base model (weights
# seeded by the init seed), which ``sleepify convert`` turns into the hybrid like any local folder. Run and
# convert folders of a model other than "small" get "-MODEL" in their names.
MODELS: dict[str, dict[str, str]] = {
    "small": {"source": "builtin:gdn-hybrid-4-small", "recipe": RECIPE, "name": "gdn-hybrid-4-small"},
    "2l": {"source": "", "recipe": "repro/rule110-cpu-2layer", "name": "gdn-hybrid-2-small"},
}
# Method variants for the ablation of the issue-14 defaults (run names get "-VARIANT"): the old forget-gate
# init (a different convert: conversion.decay_init=fla) and the conv state carried across windows and
# between passes (carry), or along one of the two paths only.
VARIANTS: dict[str, dict[str, list[str]]] = {
    "": {"convert": [], "train": []},
    "fla-init": {"convert": ["conversion.decay_init=fla"], "train": []},
    "carry": {"convert": [], "train": ["sleep.conv_state=carry"]},
    "fla-init-carry": {"convert": ["conversion.decay_init=fla"], "train": ["sleep.conv_state=carry"]},
    # carry's two paths one at a time: over the window boundary only / between the passes of a window only
    "carry-windows": {"convert": [], "train": ["sleep.conv_state=carry-across-windows"]},
    "carry-passes": {"convert": [], "train": ["sleep.conv_state=carry-between-passes"]},
}


def make_base(out: Path, seed: int) -> None:
    """The two-block base model (attention -> GDN, d = 64: ``gdn-hybrid-4-small``'s layers 0-1 and sizes),
    initialised with ``seed``, and the character tokenizer, saved as a local model folder."""
    import torch

    import sleepify
    from sleepify.data.tokenizer import build_char_tokenizer
    from sleepify.models.scratch import SleepScratchForCausalLM
    from sleepify.models.scratch.builtin import builtin_config

    sleepify.register_models()
    config = builtin_config("gdn-hybrid-4-small")
    config.num_hidden_layers, config.layer_types = 2, config.layer_types[:2]
    torch.manual_seed(seed)
    model = SleepScratchForCausalLM(config)
    model.save_pretrained(out)
    build_char_tokenizer().save_pretrained(out)


def sh(args: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    with log.open("a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        subprocess.run(args, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return time.time() - t0


def sleepify(*args: str) -> list[str]:
    return [sys.executable, "-m", "sleepify", *args]


def stays_below(metrics: Path, threshold: float, before: int | None = None) -> int | None:
    """The first logged step from which the training loss stays below ``threshold`` (None: never); with
    ``before``, over the steps before that one only."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and (before is None or r["step"] < before)]
    for i, r in enumerate(rows):
        if all(x["loss"] < threshold for x in rows[i:]):
            return int(r["step"])
    return None


def half_budget(steps: int) -> int:
    """Half of a budget of ``steps``: where the curriculum switches from N = 2 to N = 4 (as the shipped
    curriculum recipe does at 250 of its 500 steps), and the checkpoint interval."""
    return max(1, steps // 2)


def plateau_exit(metrics: Path, arm: str, steps: int) -> int | None:
    """The step at which a run left the plateau. A curriculum run is plain N = 2 up to its switch to N = 4
    (``half_budget``), and the switch throws the loss up for a few steps, often back above the
    threshold: its exit is the N = 2 phase's where that phase left the plateau, else the whole run's."""
    if arm == "curriculum":
        exit_at_n2 = stays_below(metrics, PLATEAU, before=half_budget(steps))
        if exit_at_n2 is not None:
            return exit_at_n2
    return stays_below(metrics, PLATEAU)


def train_wall(run: Path, data_dir: Path, batch: int = 64) -> float:
    """Training wall time from the run's metrics: ``tokens_per_s`` is averaged since the process started,
    so ``step * batch * row length / tokens_per_s`` (Rule 110 rows have one length; exact for a run that
    was not resumed, and independent of how long the relaunch of a finished run took)."""
    import datasets

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    length = len(datasets.load_from_disk(str(data_dir))["train"][0]["input_ids"])
    return round(rows[-1]["step"] * batch * length / rows[-1]["tokens_per_s"], 1)


@contextlib.contextmanager
def shared_inputs_lock(out: Path) -> Iterator[None]:
    """Held while the data and the converted model a run needs are made: with two copies of this script
    running (two runs at a time on two cores), the second waits for the first's ``sleepify data`` instead of
    finding its output folder locked (``sleepify`` refuses a folder another process is writing, exit 2)."""
    with (out / ".inputs.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


STEPS = 500  # the first grid's budget (and the default): runs of another budget get "-sSTEPS" in their names
# train / test rows of the data; other counts get "-nTRAIN-TEST" in the data folder's name
ROWS = (50_000, 1_000)


def run_name(
    t: int, init: int, data: int, arm: str, variant: str = "", steps: int = STEPS, model: str = "small"
) -> str:
    name = f"t{t}-i{init}-d{data}-N{arm}" + (f"-{variant}" if variant else "")
    name += f"-{model}" if model != "small" else ""
    return name + (f"-s{steps}" if steps != STEPS else "")


def data_name(t: int, data: int, rows: tuple[int, int] = ROWS) -> str:
    return f"data-t{t}-d{data}" + (f"-n{rows[0]}-{rows[1]}" if rows != ROWS else "")


def budget_overrides(arm: str, steps: int) -> list[str]:
    """Recipe overrides for a budget of ``steps``, always explicit (the recipes' own budgets differ: 1000
    steps for N = 1, 2, 4, 500 for the curriculum): the curriculum switches from N = 2 to N = 4 half-way."""
    half = half_budget(steps)
    extra = [f"train.steps={steps}", f"train.checkpoint_every={half}"]
    if arm == "curriculum":
        extra.append(f"sleep.passes_schedule=[{{step: 0, passes: 2}}, {{step: {half}, passes: 4}}]")
    return extra


def run_one(
    out: Path,
    t: int,
    init: int,
    data: int,
    arm: str,
    log: Path,
    variant: str = "",
    steps: int = STEPS,
    rows: tuple[int, int] = ROWS,
    model: str = "small",
) -> dict:
    data_dir = out / data_name(t, data, rows)
    uses_fla = "fla-init" in variant
    convert_dir = out / (
        f"convert-i{init}" + ("-fla" if uses_fla else "") + (f"-{model}" if model != "small" else "")
    )
    run = out / run_name(t, init, data, arm, variant, steps, model)
    recipe = MODELS[model]["recipe"]
    result_file = run / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    with shared_inputs_lock(out):  # two copies of this script at a time share the data and initial weights
        if not (data_dir / "meta.json").is_file():
            sh(sleepify("data", "rule110", "--out", str(data_dir), "--t", str(t), "--n-train", str(rows[0]),
                        "--n-test", str(rows[1]), "--seed", str(data), "--quiet"), log)  # fmt: skip
        if not (convert_dir / "config.json").is_file():
            source = MODELS[model]["source"]
            if not source:  # a local base model: written first, seeded with the init seed
                source = str(out / f"base-i{init}-{model}")
                if not (Path(source) / "config.json").is_file():
                    sh([sys.executable, __file__, "--make-base", source, "--init", str(init)], log)
            sh(sleepify("convert", source, "--out", str(convert_dir), "-r", recipe,
                        f"train.seed={init}", *VARIANTS[variant]["convert"]), log)  # fmt: skip
    recipes = ["-r", recipe] + (["-r", CURRICULUM] if arm == "curriculum" else ["--N", arm])
    resume = ["--resume", "auto"]
    train = ["train", str(convert_dir), *recipes, "--data", str(data_dir), f"train.seed={data}",
             *VARIANTS[variant]["train"], *budget_overrides(arm, steps)]  # fmt: skip
    sh(sleepify(*train, "--out", str(run), *resume), log)
    sh(
        sleepify("eval", str(run / "model"), "--data", str(data_dir), "--out", str(run / "eval"), "--quiet"),
        log,
    )
    ev = json.loads((run / "eval" / "eval.json").read_text())["results"][0]["overall"]
    result = {
        "t": t,
        "init_seed": init,
        "data_seed": data,
        "arm": arm,
        "variant": variant or "default",
        "exact_match": ev["accuracy"],
        "answer_loss": ev["loss"],
        "left_plateau_step": plateau_exit(run / "metrics.jsonl", arm, steps),
        "solved_step": stays_below(run / "metrics.jsonl", SOLVED),
        "steps": steps,
        "train_wall_s": train_wall(run, data_dir),
    }
    if model != "small":  # the rows of the shipped model keep their earlier format
        result["model"] = MODELS[model]["name"]
    result_file.write_text(json.dumps(result) + "\n")
    return result


def row_key(model: str, t: int, init: int, data: int, arm: str, variant: str, steps: int) -> tuple:
    return (MODELS[model]["name"], t, init, data, arm, variant or "default", steps)


def key_of(row: dict) -> tuple:
    """A row's key: rows of the shipped model carry no "model" and rows of the first grid no "steps"."""
    return (row.get("model", MODELS["small"]["name"]), row["t"], row["init_seed"], row["data_seed"],
            row["arm"], row.get("variant", "default"), row.get("steps", STEPS))  # fmt: skip


def committed_row(rows: Path, key: tuple) -> dict | None:
    """The row of ``key`` in the committed jsonl ``rows`` (the last if several), or None."""
    if not rows.is_file():
        return None
    found = [r for r in map(json.loads, rows.read_text().splitlines()) if key_of(r) == key]
    return found[-1] if found else None


def commit_row(rows: Path, row: dict, key: tuple) -> None:
    """Append ``row`` to ``rows`` unless a row of ``key`` is there (two copies of the script may share it)."""
    rows.parent.mkdir(parents=True, exist_ok=True)
    with rows.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        if not any(key_of(json.loads(line)) == key for line in f.read().splitlines() if line.strip()):
            f.write(json.dumps(row) + "\n")


def summarise(out: Path, results: list[dict], arms: list[str], steps: int = STEPS) -> None:
    default = [r for r in results if r.get("variant", "default") == "default"]  # the method as written
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    lines = [
        "| t | init seed | data seed | arm | exact match | answer loss | leaves plateau at step "
        "| solved at step | variant | train wall s |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        step = r["left_plateau_step"] if r["left_plateau_step"] is not None else "never"
        solved = r.get("solved_step") if r.get("solved_step") is not None else "never"
        lines.append(
            f"| {r['t']} | {r['init_seed']} | {r['data_seed']} | {r['arm']} | {r['exact_match']:.3f} | "
            f"{r['answer_loss']:.3f} | {step} | {solved} | {r.get('variant', 'default')} | "
            f"{r['train_wall_s']:.0f} |"
        )
    lines += [
        "",
        "| t | arm | runs | exact match mean (min-max) | answer loss mean (min-max) | left plateau |",
        "|---:|---|---:|---|---|---:|",
    ]
    for t in sorted({r["t"] for r in results}):
        for arm in arms:
            rs = [r for r in default if r["t"] == t and r["arm"] == arm]
            if not rs:
                continue
            em = [r["exact_match"] for r in rs]
            lo = [r["answer_loss"] for r in rs]
            left = sum(r["left_plateau_step"] is not None for r in rs)
            lines.append(
                f"| {t} | {arm} | {len(rs)} | {statistics.mean(em):.3f} ({min(em):.3f}-{max(em):.3f}) | "
                f"{statistics.mean(lo):.3f} ({min(lo):.3f}-{max(lo):.3f}) | {left}/{len(rs)} |"
            )
    lines += ["", *pair_table(default, arms)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(out / "results.png", default, arms, steps)


def pair_table(default: list[dict], arms: list[str]) -> list[str]:
    """One row per (t, init seed, data seed), one column per arm: "exact match / answer loss (step the run
    left the plateau; the step it solved the task, if it did)", the layout of docs/results.md; ``default``:
    the runs without a method variant."""
    names = [f"N = {a}" if a != "curriculum" else "N = 2 -> 4 curriculum" for a in arms]
    lines = [
        "| t | init seed | data seed | " + " | ".join(names) + " |",
        "|---:|---:|---:|" + "---|" * len(arms),
    ]
    for t, init, data in sorted({(r["t"], r["init_seed"], r["data_seed"]) for r in default}):
        by_arm = {r["arm"]: r for r in default if (r["t"], r["init_seed"], r["data_seed"]) == (t, init, data)}
        cells = []
        for arm in arms:
            r = by_arm.get(arm)
            if r is None:
                cells.append("not run")
                continue
            step = r["left_plateau_step"] if r["left_plateau_step"] is not None else "**never**"
            if r.get("solved_step") is not None:
                step = f"{step}; solved {r['solved_step']}"
            cells.append(f"{r['exact_match']:.3f} / {r['answer_loss']:.3f} ({step})")
        lines.append(f"| {t} | {init} | {data} | " + " | ".join(cells) + " |")
    return lines


def plot(path: Path, results: list[dict], arms: list[str], steps: int = STEPS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pairs = sorted({(r["init_seed"], r["data_seed"]) for r in results})
    for pair in pairs:
        rs = {r["arm"]: r for r in results if (r["init_seed"], r["data_seed"]) == pair}
        xs = [i for i, a in enumerate(arms) if a in rs]
        ax.plot(xs, [rs[arms[i]]["exact_match"] for i in xs], marker="o", alpha=0.8,
                label=f"init {pair[0]}, data {pair[1]}")  # fmt: skip
    ax.axhline(1 / 16, color="grey", linestyle="--", linewidth=0.8, label="constant guess (~1/16)")
    ax.set_xticks(range(len(arms)), [f"N={a}" if a != "curriculum" else "N=2->4" for a in arms])
    ax.set_ylabel("exact match (1,000 test rows)")
    ax.set_ylim(0, 1.02)
    ts = ", ".join(str(t) for t in sorted({r["t"] for r in results}))
    ax.set_title(f"Rule 110, t = {ts}, L = 24, hard eviction, {steps} steps x 64 rows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/seeds"))
    p.add_argument("--t", type=int, default=2)
    p.add_argument("--pairs", nargs="+", default=["0:0", "1:1", "2:0", "0:1", "1:0", "2:1"])
    p.add_argument("--arms", nargs="+", default=["1", "2", "4", "curriculum"])
    p.add_argument(
        "--variant", default="", choices=list(VARIANTS), help="method variant (ablation); default none"
    )
    p.add_argument("--steps", type=int, default=STEPS, help=f"train.steps for every arm (default {STEPS})")
    p.add_argument("--n-train", type=int, default=ROWS[0], help="training rows of each data seed")
    p.add_argument("--n-test", type=int, default=ROWS[1], help="test rows of each data seed")
    p.add_argument("--summarise-only", action="store_true", help="tables and plot of the finished runs only")
    p.add_argument(
        "--model", default="small", choices=list(MODELS), help="small (default) or 2l (two blocks)"
    )
    p.add_argument(
        "--rows",
        type=Path,
        help="committed rows (docs/figures/*.jsonl): runs with a row there are skipped, new rows appended",
    )
    p.add_argument("--make-base", type=Path, help=argparse.SUPPRESS)  # internal: write the 2l base model
    p.add_argument("--init", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make_base:
        make_base(args.make_base, args.init)
        return 0
    rows = (args.n_train, args.n_test)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    results: list[dict] = []
    for pair in args.pairs:
        init, data = (int(x) for x in pair.split(":"))
        for arm in args.arms:
            if args.summarise_only:
                run = args.out / run_name(args.t, init, data, arm, args.variant, args.steps, args.model)
                if not (run / "result.json").is_file():
                    continue
                r = json.loads((run / "result.json").read_text())
                if (run / "metrics.jsonl").is_file():  # else the recorded values (a copied result)
                    r["train_wall_s"] = train_wall(run, args.out / data_name(args.t, data, rows))
                    r["solved_step"] = stays_below(run / "metrics.jsonl", SOLVED)  # older runs lack it
                    # older curriculum rows counted the loss jump at the switch as a return to the plateau
                    r["left_plateau_step"] = plateau_exit(run / "metrics.jsonl", arm, r["steps"])
                results.append(r)
                continue
            key = row_key(args.model, args.t, init, data, arm, args.variant, args.steps)
            kept = committed_row(args.rows, key) if args.rows else None
            if kept is None:
                kept = run_one(
                    args.out, args.t, init, data, arm, log, args.variant, args.steps, rows, args.model
                )
                if args.rows:
                    commit_row(args.rows, kept, key)
            results.append(kept)
            summarise(args.out, results, args.arms, args.steps)
            print(json.dumps(results[-1]), flush=True)
    if args.summarise_only and results:
        summarise(args.out, results, args.arms, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
