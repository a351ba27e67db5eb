"""Depo at CPU scale (issue 14; the shape of the paper's Fig. 3): test loss per hop count k over training
steps, for N = 1, 2, 4 sleep passes.

The shipped recipe ``recipes/repro/depo-cpu.yaml`` (d = 64 GDN hybrid, cycles of 3-12 nodes, queries with
k <= 8, L = 12, hard eviction, 600 steps of 64 rows, a checkpoint every 100 steps) is run once per N with
the same initial weights and data order:

    sleepify data depo --out OUT/data --max-nodes 12 --max-k 8 --n-queries 4 --n-train 50000 \\
        --n-test 1000 --seed D
    sleepify convert builtin:gdn-hybrid-4-small --out OUT/convert -r repro/depo-cpu train.seed=I
    sleepify train OUT/convert -r repro/depo-cpu --N N --data OUT/data train.seed=D --out OUT/N<N>

then the converted model (step 0), every kept checkpoint and the final model are scored on the first
``--n-eval`` test rows (test k in {1, 2, 4, 8}), each with the run's N, by the same
``sleepify.evaluation.evaluate`` that ``sleepify eval`` uses: answer-token loss and exact match per k.
Writes ``OUT/curves.jsonl`` (one row per N, step and k), ``OUT/curves.md`` and ``OUT/curves.png``
(one panel per k, a line per N). Finished runs are not retrained (``--resume auto``) and scored steps are
kept, so the script can be restarted. ``--score-only`` trains nothing and scores what each arm has so far:
a run that was stopped (or is still training) up to its last checkpoint.

Sizes (issue 28: a Depo where some N learns k = 4 on a CPU): ``--max-nodes`` / ``--max-k`` set the graph
(default 12 / 8, the recipe's), ``--model 2l`` trains the two-block (attention -> GDN) d = 64 hybrid of
``experiments/rule110_seeds.py --model 2l`` instead of the four-block one (its base model is written by that
script's ``--make-base``, seeded by the init seed). ``OUT/settings.json`` records them; a restart with other
settings is refused. ``--rows FILE`` appends every scored row, with its settings, to a committed jsonl
(``docs/figures/...``) and skips an arm whose final step is already there: a grid moved to another
machine goes on where it stopped.

Usage::

    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python experiments/depo_cpu.py --out runs/depo > runs/depo.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RECIPE = "repro/depo-cpu"
N_QUERIES = 4  # queries per row (the recipe's); graph size: --max-nodes / --max-k
MODELS = {"small": "gdn-hybrid-4-small", "2l": "gdn-hybrid-2-small"}  # --model -> the name in the rows
RULE110 = Path(__file__).with_name("rule110_seeds.py")  # owns --make-base (the two-block base model)
SETTINGS = ("model", "max_nodes", "max_k", "steps", "init_seed", "data_seed", "n_train", "n_test", "n_eval")

sys.path.insert(0, str(RULE110.parent))  # run as a script or loaded from its file: the sibling script
from rule110_seeds import sh, sleepify  # noqa: E402  (how both grids run and log a sleepify step)


def weight_files(convert_dir: Path, run: Path) -> dict[int, Path]:
    """Step -> safetensors file: the converted model (0), every kept checkpoint, the final model."""
    from sleepify.training.checkpoint import checkpoint_dirs

    files = {0: convert_dir / "model.safetensors"}
    for ckpt in checkpoint_dirs(run):
        files[int(json.loads((ckpt / "meta.json").read_text())["step"])] = ckpt / "model.safetensors"
    final = run / "model" / "model.safetensors"
    if final.is_file():  # an unfinished run (stopped, or still training) is scored up to its last checkpoint
        logged = (run / "metrics.jsonl").read_text().splitlines()
        files.setdefault(max(int(json.loads(line)["step"]) for line in logged), final)
    return dict(sorted(files.items()))


def score(
    passes: int, files: dict[int, Path], convert_dir: Path, data_dir: Path, n_eval: int, done: set[int]
) -> list[dict]:
    """Loss and exact match per k of the run's model with each step's weights, evaluated with N = ``passes``
    (the converted model's architecture: training changes the weights and N, nothing else)."""
    import torch
    from safetensors.torch import load_file

    from sleepify.evaluation import evaluate, load_eval_data
    from sleepify.runs import load_model

    test, _ = load_eval_data(data_dir)
    model = load_model(convert_dir, torch.float32)
    model.config.sleep_passes = passes
    rows = []
    for step, path in files.items():
        if step in done:
            continue
        model.load_state_dict(load_file(str(path)))
        res = evaluate(model, test, batch_size=100, max_examples=n_eval)
        for k, b in sorted(res.buckets.items()):
            rows.append({"N": passes, "step": step, "k": int(k), "loss": b.loss, "exact_match": b.accuracy})
        rows.append({"N": passes, "step": step, "k": "all", "loss": res.overall.loss,
                     "exact_match": res.overall.accuracy})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_report(out: Path, rows: list[dict], title: str = "") -> None:
    (out / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    arms = sorted({r["N"] for r in rows})
    ks = sorted({r["k"] for r in rows if r["k"] != "all"})
    last = {n: max(r["step"] for r in rows if r["N"] == n) for n in arms}
    lines = [
        "| k | " + " | ".join(f"N={n} loss (exact match)" for n in arms) + " |",
        "|---:|" + "---:|" * len(arms),
    ]
    for k in [*ks, "all"]:
        cells = []
        for n in arms:
            r = next(r for r in rows if r["N"] == n and r["k"] == k and r["step"] == last[n])
            cells.append(f"{r['loss']:.3f} ({r['exact_match']:.3f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    (out / "curves.md").write_text("\n".join(lines) + "\n")
    plot(out / "curves.png", rows, arms, ks, title)


def plot(path: Path, rows: list[dict], arms: list[int], ks: list[int], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 3.2), sharey=True)
    for ax, k in zip(axes, ks, strict=True):
        for n in arms:
            rs = sorted((r for r in rows if r["N"] == n and r["k"] == k), key=lambda r: r["step"])
            ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], marker=".", label=f"N={n}")
        ax.set_title(f"k = {k}")
        ax.set_xlabel("step (64 rows)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test answer-token loss (nats)")
    axes[0].legend()
    fig.suptitle(title or "Depo at CPU scale: 3-12 nodes, L = 12, hard eviction, d = 64", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def settings_of(args: argparse.Namespace) -> dict:
    return {
        "model": MODELS[args.model],
        "max_nodes": args.max_nodes,
        "max_k": args.max_k,
        "steps": args.steps or 600,
        "init_seed": args.init_seed,
        "data_seed": args.data_seed,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "n_eval": args.n_eval,
    }


def check_settings(out: Path, settings: dict) -> None:
    """``OUT/settings.json`` is written on the first run; a restart with other settings is refused, so the
    curves of one folder never mix two experiments."""
    file = out / "settings.json"
    if file.is_file():
        before = json.loads(file.read_text())
        before.setdefault("model", MODELS["small"])  # folders of the first runs: the four-block model
        changed = sorted(k for k in settings if before.get(k, settings[k]) != settings[k])
        if changed:
            raise SystemExit(
                f"error: {out} was run with other settings ({', '.join(changed)}: see {file}); "
                "choose another --out or the same settings"
            )
    else:
        file.write_text(json.dumps(settings, indent=1) + "\n")


def committed_rows(rows_file: Path | None, settings: dict) -> list[dict]:
    """The rows of these settings in the committed jsonl (without the settings keys)."""
    if rows_file is None or not rows_file.is_file():
        return []
    found = []
    for line in rows_file.read_text().splitlines():
        row = json.loads(line)
        if all(row.get(k) == v for k, v in settings.items()):
            found.append({k: v for k, v in row.items() if k not in SETTINGS})
    return found


def commit_rows(rows_file: Path, settings: dict, new: list[dict]) -> None:
    """Append ``new`` (with the settings) to the committed jsonl, skipping rows already there."""
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    have = {(r["N"], r["step"], str(r["k"])) for r in committed_rows(rows_file, settings)}
    with rows_file.open("a") as f:
        for r in new:
            if (r["N"], r["step"], str(r["k"])) not in have:
                f.write(json.dumps({**settings, **r}) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/depo"))
    p.add_argument("--arms", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument(
        "--steps",
        type=int,
        help="train.steps (a checkpoint every sixth of it, as the recipe's 100 of 600); default 600",
    )
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=1_000)
    p.add_argument("--n-eval", type=int, default=500, help="test rows scored per step")
    p.add_argument("--max-nodes", type=int, default=12, help="largest cycle (default 12, the recipe's)")
    p.add_argument("--max-k", type=int, default=8, help="largest hop count of the queries (default 8)")
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="small",
        help="small: the four-block d = 64 hybrid (default); 2l: its first two blocks (attention -> GDN)",
    )
    p.add_argument(
        "--rows", type=Path, help="append scored rows to this committed jsonl; skip arms done there"
    )
    p.add_argument("--report-only", action="store_true", help="rewrite the report from curves.jsonl")
    p.add_argument(
        "--score-only",
        action="store_true",
        help="train nothing; score what every arm has so far (an unfinished run: up to its last checkpoint)",
    )
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    curves = out / "curves.jsonl"
    settings = settings_of(args)
    check_settings(out, settings)
    rows = [json.loads(line) for line in curves.read_text().splitlines()] if curves.is_file() else []
    for r in committed_rows(args.rows, settings):  # rows scored on another machine
        if not any((q["N"], q["step"], q["k"]) == (r["N"], r["step"], r["k"]) for q in rows):
            rows.append(r)
    title = (f"Depo at CPU scale: {MODELS[args.model]}, cycles of 3-{args.max_nodes} nodes, "
             f"k <= {args.max_k}, L = 12, hard eviction")  # fmt: skip
    last_step = settings["steps"]
    if not args.report_only:
        data_dir, convert_dir = out / "data", out / "convert"
        if not (data_dir / "meta.json").is_file():
            sh(sleepify("data", "depo", "--out", str(data_dir), "--max-nodes", str(args.max_nodes),
                        "--max-k", str(args.max_k), "--n-queries", str(N_QUERIES),
                        "--n-train", str(args.n_train), "--n-test", str(args.n_test), "--seed",
                        str(args.data_seed), "--quiet", "--overwrite"), log)  # fmt: skip
        if not (convert_dir / "config.json").is_file():
            source = "builtin:gdn-hybrid-4-small"
            if args.model == "2l":  # a local base model, seeded by the init seed
                source = str(out / f"base-i{args.init_seed}-2l")
                if not (Path(source) / "config.json").is_file():
                    sh(
                        [sys.executable, str(RULE110), "--make-base", source, "--init", str(args.init_seed)],
                        log,
                    )
            sh(sleepify("convert", source, "--out", str(convert_dir), "-r", RECIPE,
                        f"train.seed={args.init_seed}", "--overwrite"), log)  # fmt: skip
        steps = (  # a checkpoint every sixth of the budget, rounded up: none lands just before the last step
            []
            if args.steps is None
            else [f"train.steps={args.steps}", f"train.checkpoint_every={-(-args.steps // 6)}"]
        )
        for n in args.arms:
            run = out / f"N{n}"
            if any(r["N"] == n and r["step"] == last_step for r in rows) and not run.is_dir():
                continue  # finished and scored elsewhere (the committed rows)
            if not args.score_only and not (run / "model" / "config.json").is_file():
                sh(sleepify("train", str(convert_dir), "-r", RECIPE, "--N", str(n), "--data", str(data_dir),
                            f"train.seed={args.data_seed}", *steps, "--out", str(run), "--resume", "auto"),
                   log)  # fmt: skip
            if not run.is_dir():
                continue
            done = {r["step"] for r in rows if r["N"] == n}
            new = score(n, weight_files(convert_dir, run), convert_dir, data_dir, args.n_eval, done)
            rows += new
            if args.rows:
                commit_rows(args.rows, settings, new)
            write_report(out, rows, title)
    if rows:
        write_report(out, rows, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
