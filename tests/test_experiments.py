"""The experiment scripts under experiments/ run end to end on a tiny budget and can be restarted."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str, in_process: bool = True):
    """An experiment script as a module. ``in_process``: its ``python -m sleepify ...`` and ``--make-base``
    steps run in this process (through click's test runner), not as subprocesses: each subprocess costs
    seconds of imports, and the scripts' subprocess call itself is tested by
    test_two_rule110_seeds_processes_share_one_new_data_and_convert_folder."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if in_process and hasattr(module, "sh"):
        module.sh = _in_process_sh
    return module


def _in_process_sh(args: list[str], log: Path) -> float:
    import sys
    import time

    import torch

    from tests.helpers import invoke

    t0, threads = time.time(), torch.get_num_threads()
    torch.set_num_threads(1)  # what the scripts' subprocesses get (OMP_NUM_THREADS=1)
    with log.open("a") as f:
        f.write("$ " + " ".join(args) + "\n")
    if args[:3] == [sys.executable, "-m", "sleepify"]:
        output = invoke(args[3:])  # a non-zero exit fails the test with the command's output
        with log.open("a") as f:
            f.write(output)
    else:  # [python, rule110_seeds.py, --make-base, OUT, --init, SEED]
        assert Path(args[1]).name == "rule110_seeds.py" and args[2] == "--make-base", args
        load("rule110_seeds", in_process=False).make_base(Path(args[3]), int(args[5]))
    torch.set_num_threads(threads)
    return time.time() - t0


def test_depo_cpu_scores_every_checkpoint_per_k_and_restarts(tmp_path: Path) -> None:
    depo = load("depo_cpu")
    out = tmp_path / "depo"
    args = ["--out", str(out), "--arms", "1", "2", "--steps", "2", "--n-train", "32", "--n-test", "16",
            "--n-eval", "16"]  # fmt: skip
    assert depo.main(args) == 0
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    # step 0 (the converted model), the checkpoint at step 1 and the final step 2, for both N
    assert {(r["N"], r["step"]) for r in rows} == {(n, s) for n in (1, 2) for s in (0, 1, 2)}
    ks = {r["k"] for r in rows}
    assert "all" in ks and ks - {"all"} <= {1, 2, 4, 8} and len(ks) >= 3
    # the same weights score the same under N = 1 and N = 2 only at step 0 if N does not matter: it does
    first = {(r["N"], r["k"]): r["loss"] for r in rows if r["step"] == 0}
    assert first[(1, "all")] != first[(2, "all")]
    assert all(r["loss"] > 0 for r in rows)
    assert (out / "curves.png").stat().st_size > 0 and "| all |" in (out / "curves.md").read_text()
    # a restart retrains and rescores nothing
    before = (out / "curves.jsonl").read_text()
    mtime = (out / "N1" / "model" / "model.safetensors").stat().st_mtime_ns
    assert depo.main(args) == 0
    assert (out / "curves.jsonl").read_text() == before
    assert (out / "N1" / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    stored = (out / "N2" / "recipe.yaml").read_text()
    assert "window: 12" in stored and "passes: 2" in stored

    # --score-only trains nothing and scores an unfinished run (no model/ yet) up to its last checkpoint,
    # with the run's N: the same numbers as when it was scored finished
    shutil.rmtree(out / "N2" / "model")
    (out / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["N"] == 1))
    assert depo.main([*args, "--score-only"]) == 0
    assert not (out / "N2" / "model").exists()
    partial = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    metas = (out / "N2" / "checkpoints").glob("*/meta.json")
    kept = {int(json.loads(m.read_text())["step"]) for m in metas}
    assert {r["step"] for r in partial if r["N"] == 2} == {0, *kept}
    earlier = {(r["step"], r["k"]): r["loss"] for r in rows if r["N"] == 2}
    assert all(r["loss"] == earlier[(r["step"], r["k"])] for r in partial if r["N"] == 2)


def test_depo_cpu_two_block_model_smaller_graph_and_committed_rows(tmp_path: Path) -> None:
    depo = load("depo_cpu")
    out, committed = tmp_path / "depo", tmp_path / "figures" / "depo.jsonl"
    args = ["--out", str(out), "--arms", "1", "--steps", "2", "--n-train", "32", "--n-test", "16",
            "--n-eval", "16", "--model", "2l", "--max-nodes", "6", "--max-k", "4",
            "--rows", str(committed)]  # fmt: skip
    assert depo.main(args) == 0
    config = json.loads((out / "convert" / "config.json").read_text())
    assert config["base_config"]["num_hidden_layers"] == 2  # the base of rule110_seeds --make-base
    rows = [json.loads(line) for line in committed.read_text().splitlines()]
    assert {r["step"] for r in rows} == {0, 1, 2} and {r["k"] for r in rows} - {"all"} <= {1, 2, 4}
    assert all(r["model"] == "gdn-hybrid-2-small" and r["max_nodes"] == 6 and r["max_k"] == 4 for r in rows)
    # other settings in the same folder: refused, nothing changed
    before = (out / "curves.jsonl").read_text()
    with pytest.raises(SystemExit, match="max_k"):
        depo.main([*args[:-6], "--max-nodes", "6", "--max-k", "8", "--rows", str(committed)])
    assert (out / "curves.jsonl").read_text() == before
    # another machine: the run folder is gone, the committed rows are kept -> nothing is retrained
    moved = tmp_path / "moved"
    assert depo.main(["--out", str(moved), *args[2:]]) == 0
    assert not (moved / "N1").exists()
    assert (moved / "curves.jsonl").read_text().count("\n") == len(rows)
    assert committed.read_text().count("\n") == len(rows)


def test_rule110_seeds_runs_each_arm_on_a_smaller_budget_and_restarts(tmp_path: Path) -> None:
    seeds = load("rule110_seeds")
    out = tmp_path / "seeds"
    args = ["--out", str(out), "--t", "2", "--pairs", "0:1", "--arms", "1", "curriculum", "--steps", "2",
            "--n-train", "64", "--n-test", "16"]  # fmt: skip
    assert seeds.main(args) == 0
    runs = {r["arm"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(runs) == {"1", "curriculum"}
    for arm, r in runs.items():
        assert (r["t"], r["init_seed"], r["data_seed"], r["steps"]) == (2, 0, 1, 2)
        assert 0 <= r["exact_match"] <= 1 and r["answer_loss"] > 0
        run = out / f"t2-i0-d1-N{arm}-s2"  # another budget than the recipe's is named by its steps
        logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert logged[-1] == 2
    # the curriculum switches from N = 2 to N = 4 half-way through the budget, like the shipped recipe
    stored = (out / "t2-i0-d1-Ncurriculum-s2" / "recipe.yaml").read_text()
    assert "passes: 4" in stored and "step: 1" in stored
    assert (out / "data-t2-d1-n64-16" / "meta.json").is_file()
    table = (out / "results.md").read_text()
    assert "| 2 | 0 | 1 | " in table and "N = 2 -> 4 curriculum" in table
    # a restart retrains nothing
    mtime = (out / "t2-i0-d1-N1-s2" / "model" / "model.safetensors").stat().st_mtime_ns
    assert seeds.main(args) == 0
    assert (out / "t2-i0-d1-N1-s2" / "model" / "model.safetensors").stat().st_mtime_ns == mtime


def test_two_rule110_seeds_processes_share_one_new_data_and_convert_folder(tmp_path: Path) -> None:
    """docs/results.md runs two copies at a time: started together on a fresh --out, both need the same
    data and initial weights; the second waits for the first's instead of failing on its locked folder."""
    import os
    import subprocess
    import sys

    out = tmp_path / "seeds"
    script = str(ROOT / "experiments" / "rule110_seeds.py")
    common = [script, "--out", str(out), "--t", "2", "--pairs", "1:0", "--steps", "1", "--n-train", "32",
              "--n-test", "8"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, *common, "--arms", arm],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for arm in ("1", "2")
    ]
    for proc in procs:
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output[-2000:]
    for arm in ("1", "2"):
        assert (out / f"t2-i1-d0-N{arm}-s1" / "result.json").is_file()
    log = (out / "commands.log").read_text()
    assert log.count(" data rule110 ") == 1 and log.count(" convert builtin:") == 1


def test_rule110_seeds_runs_are_the_shipped_recipes_at_their_own_budgets() -> None:
    """docs/results.md reads the script's runs as runs of the shipped recipes: at the recipes' own budgets
    (1000 steps for --N, 500 for the curriculum) the script's overrides change nothing."""
    from sleepify.config import load_recipe

    seeds = load("rule110_seeds")
    plain = ["repro/rule110-cpu"]
    shipped = load_recipe(plain).recipe
    assert load_recipe(plain, seeds.budget_overrides("4", shipped.train.steps)).recipe == shipped
    curriculum = ["repro/rule110-cpu", "repro/rule110-cpu-curriculum"]
    shipped = load_recipe(curriculum).recipe
    overrides = seeds.budget_overrides("curriculum", shipped.train.steps)
    assert load_recipe(curriculum, overrides).recipe == shipped


def test_rule110_seeds_reads_plateau_exit_and_solve_steps_from_the_training_log(tmp_path: Path) -> None:
    seeds = load("rule110_seeds")
    metrics = tmp_path / "metrics.jsonl"
    losses = [0.70, 0.66, 0.69, 0.60, 0.09, 0.2, 0.05, 0.04]  # dips back above each threshold once
    lines = [json.dumps({"step": 25 * (i + 1), "loss": x}) for i, x in enumerate(losses)]
    metrics.write_text("\n".join([*lines, json.dumps({"step": 200, "eval": 1})]) + "\n")
    assert seeds.stays_below(metrics, seeds.PLATEAU) == 100  # 0.66 at step 50 is followed by 0.69
    assert seeds.stays_below(metrics, seeds.SOLVED) == 175
    assert seeds.stays_below(metrics, 0.01) is None
    assert seeds.stays_below(metrics, seeds.PLATEAU, before=75) == 50  # 0.69 at step 75 is not counted
    assert seeds.stays_below(metrics, seeds.PLATEAU, before=50) is None
    assert seeds.stays_below(metrics, seeds.PLATEAU, before=125) == 100


def test_rule110_seeds_curriculum_leaves_the_plateau_in_its_n2_phase_despite_the_jump_at_the_switch(
    tmp_path: Path,
) -> None:
    seeds = load("rule110_seeds")
    metrics = tmp_path / "metrics.jsonl"
    # 8 steps, switch to N = 4 at step 4: off the plateau at step 2, thrown back above 0.67 at the switch
    losses = [0.70, 0.60, 0.55, 0.80, 0.50, 0.40, 0.30]
    metrics.write_text("".join(json.dumps({"step": i + 1, "loss": x}) + "\n" for i, x in enumerate(losses)))
    assert seeds.plateau_exit(metrics, "curriculum", steps=8) == 2
    assert seeds.plateau_exit(metrics, "2", steps=8) == 5  # a plain run: the jump is a return to the plateau
    # a curriculum whose N = 2 phase never left the plateau: the whole run's exit
    metrics.write_text(
        "".join(json.dumps({"step": i + 1, "loss": x}) + "\n" for i, x in enumerate([0.7] * 3 + losses[3:]))
    )
    assert seeds.plateau_exit(metrics, "curriculum", steps=8) == 5


def test_plot_curves_draws_one_curve_per_run_with_its_passes_or_label(tmp_path: Path) -> None:
    plot_curves = load("plot_curves")
    runs = []
    for passes in (1, 2):
        run = tmp_path / f"N{passes}"
        run.mkdir()
        (run / "recipe.yaml").write_text(f"sleep:\n  window: 24\n  passes: {passes}\n")
        rows = [json.dumps({"step": step, "loss": 0.7 / step}) for step in (1, 2)]
        (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        runs.append(str(run))
    out = tmp_path / "curves.png"
    labels = plot_curves.main(str(out), [runs[0], runs[1] + "=N=2, 3000 steps"], title="Rule 110, t = 4")
    assert labels == ["N=1", "N=2, 3000 steps"]  # the passes from recipe.yaml, or the label given
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rule110_seeds_two_block_model_commits_rows_and_skips_committed_ones(tmp_path: Path) -> None:
    """Issue 28: --model 2l builds the two-block hybrid from a seeded local base; --rows appends each new row
    to a committed jsonl and skips a run whose row is there, also in a fresh --out (another machine)."""
    seeds = load("rule110_seeds")
    rows = tmp_path / "figures" / "rows.jsonl"
    args = ["--t", "2", "--pairs", "1:0", "--arms", "1", "--steps", "1", "--n-train", "32", "--n-test", "8",
            "--model", "2l", "--rows", str(rows)]  # fmt: skip
    assert seeds.main(["--out", str(tmp_path / "a"), *args]) == 0
    (row,) = map(json.loads, rows.read_text().splitlines())
    assert (row["model"], row["t"], row["init_seed"], row["data_seed"], row["arm"], row["steps"]) == (
        "gdn-hybrid-2-small", 2, 1, 0, "1", 1)  # fmt: skip
    config = json.loads((tmp_path / "a" / "convert-i1-2l" / "config.json").read_text())
    assert config["base_config"]["layer_types"] == ["full_attention", "linear_attention"]
    assert (tmp_path / "a" / "t2-i1-d0-N1-2l-s1" / "result.json").is_file()
    # the same init seed gives the same base weights; another gives others
    from safetensors.torch import load_file

    seeds.make_base(tmp_path / "again", 1)
    seeds.make_base(tmp_path / "other", 2)
    bases = (tmp_path / "a" / "base-i1-2l", tmp_path / "again", tmp_path / "other")
    first, again, other = (load_file(p / "model.safetensors") for p in bases)
    assert all((first[k] == again[k]).all() for k in first)
    assert any((first[k] != other[k]).any() for k in first)
    # a fresh --out: the committed row is reused, nothing runs, the row is not appended twice
    assert seeds.main(["--out", str(tmp_path / "b"), *args]) == 0
    assert not list((tmp_path / "b").glob("t2-*")) and len(rows.read_text().splitlines()) == 1
    assert json.loads((tmp_path / "b" / "results.jsonl").read_text()) == row
    # another budget is another row
    seeds.commit_row(rows, {**row, "steps": 2}, seeds.key_of({**row, "steps": 2}))
    seeds.commit_row(rows, row, seeds.key_of(row))
    assert [json.loads(x)["steps"] for x in rows.read_text().splitlines()] == [1, 2]


def test_gpu_science_plan_fits_seven_minutes_and_splits_the_steps_evenly() -> None:
    science = load("gpu_science")
    assert sum(s for _, s, _ in science.PHASES) + science.MARGIN_S == science.BUDGET_S == 420
    assert science.MARGIN_S >= 0
    text = science.plan_text([4, 8])
    assert "t = 4, 8" in text and "420 s" in text and all(name in text for name, _, _ in science.PHASES)
    step_s = {1: 0.1, 2: 0.2, 4: 0.4}
    # 280 s over 2 depths x (0.1 + 0.2 + 0.4) s per step, plus 10 %: 181 steps for every run
    assert science.steps_per_run(step_s, [4, 8], 280, 20, 2000) == 181
    assert science.steps_per_run(step_s, [4, 8], 280, 20, 100) == 100
    assert science.steps_per_run({1: 9.0, 2: 9.0, 4: 9.0}, [4, 8], 280, 20, 2000) == 20


def test_gpu_science_runs_at_toy_shapes_without_datasets_or_click(tmp_path: Path) -> None:
    """The GPU machine has torch, transformers and triton (plus the carried wheels), not datasets or click:
    run the script with both unimportable, at toy shapes, on whatever device this is."""
    import os
    import subprocess
    import sys

    out = tmp_path / "science"
    script = ROOT / "experiments" / "gpu_science.py"
    blocked = (
        "import runpy, sys; sys.modules['datasets'] = None; sys.modules['click'] = None; "
        f"sys.argv = [{str(script)!r}, '--tiny', '--t', '2', '--out', {str(out)!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["t"], r["arm"]) for r in rows] == [(t, n) for t in (2, 4) for n in ("1", "2", "4")]
    cpu_keys = {
        "t",
        "init_seed",
        "data_seed",
        "arm",
        "variant",
        "exact_match",
        "answer_loss",
        "left_plateau_step",
        "solved_step",
        "steps",
        "train_wall_s",
    }  # rule110_seeds.py's rows
    for r in rows:
        assert cpu_keys <= set(r) and r["steps"] == 2 and not r["cut"] and r["batch_size"] == 8
        assert 0 <= r["exact_match"] <= 1 and r["answer_loss"] > 0 and r["tokens"] == 2 * 8 * 102
    # the same weights and data: the runs differ by N only, and N changes the result
    assert len({round(r["answer_loss"], 6) for r in rows if r["t"] == 2}) == 3
    curves = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert {(c["t"], c["N"], c["step"]) for c in curves} == {(t, n, s) for t in (2, 4) for n in (1, 2, 4)
                                                            for s in (1, 2)}  # fmt: skip
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["step_s"]) == {"1", "2", "4"} and plan["steps"] == 2 and plan["ts"] == [2, 4]
    for t in (2, 4):
        assert (out / f"rule110-gpu-t{t}-loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2 | 0 | 0 |" in (out / "results.md").read_text()
