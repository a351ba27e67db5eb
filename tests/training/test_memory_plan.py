"""The memory planner against measurement: a few-M-parameter Ouro-shaped hybrid trained for two optimizer
steps in a fresh process per setting (peak RSS: ``VmHWM``, minus the process before the model),
against the plan (without its runtime part), at three settings: two N, window checkpointing on and off."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sleepify.errors import SleepifyError
from sleepify.memory_plan import largest_fitting, parse_memory, plan_memory

ROOT = Path(__file__).resolve().parents[2]
SHAPE = dict(vocab_size=2000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
             num_attention_heads=2, num_key_value_heads=2, head_dim=128, total_ut_steps=2)  # fmt: skip
OVERRIDES = ["conversion.jet_layers=[1, 3]", "conversion.jet.num_heads=1", "conversion.jet.head_dim=128"]
SEQ, WINDOW, SCORED = 512, 128, 32

CHILD = """
import json, resource, sys
import torch
import sleepify
from sleepify.config import load_recipe
from sleepify.config.schema import TrainSection
from sleepify.models.hybrid import SleepHybridForCausalLM
from sleepify.models.ouro import OuroConfig
from sleepify.planning import plan_conversion
from sleepify.training.optim import MuonAdamW
from sleepify.memory_plan import peak_rss

shape, overrides, n, ckpt, seq, window, scored = json.loads(sys.argv[1])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
rec = load_recipe([], overrides + [f"sleep.passes={n}", f"sleep.window={window}"]).recipe
config = plan_conversion(OuroConfig(**shape), rec).hybrid_config()
torch.manual_seed(0)
ids = torch.randint(0, shape["vocab_size"], (1, seq))
labels = torch.full_like(ids, -100)
labels[:, -scored:] = ids[:, -scored:]
before = rss()
model = SleepHybridForCausalLM(config).train()
optim = MuonAdamW(model, TrainSection())
for _ in range(2):  # the second step runs with the optimizer state allocated
    optim.zero_grad()
    model(input_ids=ids, labels=labels, logits="none", checkpoint_windows=ckpt).loss.backward()
    optim.step()
print(peak_rss() - before)
"""


def _config():
    from sleepify.config import load_recipe
    from sleepify.models.ouro import OuroConfig
    from sleepify.planning import plan_conversion

    return plan_conversion(OuroConfig(**SHAPE), load_recipe([], OVERRIDES).recipe).hybrid_config()


SETTINGS = [(1, False), (3, False), (3, True)]


@pytest.fixture(scope="module")
def measured() -> dict[tuple[int, bool], int]:
    """Peak RSS over the process before the model, per setting, each in a fresh process."""
    # big allocations straight from mmap and back to the system on free: RSS follows the live tensors
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    out = {}
    for passes, ckpt in SETTINGS:
        args = json.dumps([SHAPE, OVERRIDES, passes, ckpt, SEQ, WINDOW, SCORED])
        run = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        out[(passes, ckpt)] = int(run.stdout.split()[-1])
    return out


@pytest.mark.parametrize(("passes", "ckpt"), SETTINGS)
def test_prediction_within_25_percent_of_measured_peak(measured: dict, passes: int, ckpt: bool) -> None:
    plan = plan_memory(_config(), passes=passes, window=WINDOW, seq_len=SEQ, batch=1, dtype="float32",
                       scored_tokens=SCORED, checkpoint_windows=ckpt)  # fmt: skip
    predicted = plan.peak_bytes - plan.parts["runtime"]
    got = measured[(passes, ckpt)]
    assert abs(predicted - got) <= 0.25 * got, (passes, ckpt, predicted, got, plan.parts)


def test_parts_follow_the_settings() -> None:
    config = _config()
    kw = dict(window=WINDOW, seq_len=SEQ, dtype="float32", scored_tokens=SCORED)
    off = {n: plan_memory(config, passes=n, checkpoint_windows=False, **kw) for n in (1, 2, 4)}
    # without checkpointing the three sleeping windows' passes are all kept: linear in N
    a1, a2, a4 = (off[n].parts["activations"] for n in (1, 2, 4))
    assert a2 > a1 and abs((a4 - a2) - 2 * (a2 - a1)) <= 2
    on = plan_memory(config, passes=4, checkpoint_windows=True, **kw)
    assert on.parts["activations"] < a4 / 2  # one window recomputed at a time instead of three kept
    bf16 = plan_memory(config, passes=4, dtype="bfloat16", window=WINDOW, seq_len=SEQ, scored_tokens=SCORED)
    assert bf16.parts["weights"] * 2 == on.parts["weights"]
    assert bf16.settings["state_dtype"] == "bfloat16" and on.settings["state_dtype"] == "fp32"
    warm = plan_memory(config, passes=4, trainable=["jet_layers.*"], **kw)
    assert warm.parts["gradients"] < on.parts["gradients"] / 5
    fsdp = plan_memory(config, passes=4, distributed="fsdp", world=4, **kw)
    assert fsdp.parts["optimizer"] * 4 == on.parts["optimizer"]
    ddp = plan_memory(config, passes=4, distributed="ddp", world=4, **kw)
    assert ddp.parts["gradients"] == 2 * on.parts["gradients"]
    assert json.loads(json.dumps(on.to_dict()))["peak_bytes"] == sum(on.parts.values())


def test_largest_fitting_is_the_boundary() -> None:
    config = _config()
    kw = dict(config=config, window=WINDOW, seq_len=SEQ, dtype="float32", scored_tokens=SCORED,
              checkpoint_windows=False)  # fmt: skip
    budget = plan_memory(passes=6, batch=1, **kw).peak_bytes + 1
    assert largest_fitting(budget, "passes", batch=1, **kw) == 6
    batch = largest_fitting(budget, "batch", passes=1, **kw)
    assert plan_memory(passes=1, batch=batch, **kw).peak_bytes <= budget
    assert plan_memory(passes=1, batch=batch + 1, **kw).peak_bytes > budget
    assert largest_fitting(1000, "passes", batch=1, **kw) == 0


def test_parse_memory() -> None:
    assert parse_memory("80GiB") == 80 * 2**30
    assert parse_memory("24 GB") == 24 * 10**9
    assert parse_memory("1.5MiB") == int(1.5 * 2**20)
    with pytest.raises(SleepifyError, match="--memory"):
        parse_memory("lots")


def test_peak_rss_is_the_child_own() -> None:
    """ru_maxrss of a child carries the forked parent's peak over exec; peak_rss must not (bench_convert
    reported the checkpoint writer's memory as the conversion's)."""
    big = bytearray(800 * 2**20)
    big[::4096] = b"\1" * len(big[::4096])  # every page touched: resident in this (parent) process
    code = "from sleepify.memory_plan import peak_rss; print(peak_rss())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert 0 < int(out.stdout) < 600 * 2**20, int(out.stdout)
    del big


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted tiny Qwen2 (weights) and the same folder with config.json alone, and rule110 data."""
    import shutil

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.helpers import invoke

    root = tmp_path_factory.mktemp("plan")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(root / "base")
    invoke(["data", "rule110", "--out", str(root / "data"), "--n-train", "8", "--n-test", "4", "--t", "2",
            "--quiet"])  # fmt: skip
    jet = ["conversion.jet.num_heads=2", "conversion.jet.head_dim=8", "conversion.jet.generator_reduction=4"]
    invoke(["convert", str(root / "base"), "--out", str(root / "convert"), *jet])
    (root / "config-only").mkdir()
    for name in ("config.json", "recipe.yaml"):
        shutil.copy2(root / "convert" / name, root / "config-only" / name)
    return root


def test_train_dry_run_prints_the_plan(converted: Path) -> None:
    from sleepify.cli.main import cli

    data = str(converted / "data")
    args = ["train", str(converted / "convert"), "--data", data, "--N", "3", "--dry-run", "--memory", "1GiB"]
    out = CliRunner().invoke(cli, args, catch_exceptions=False).output
    assert "memory plan (per process, cpu, one process): peak ~" in out
    for part in ("weights (", "gradients (", "optimizer (Muon momentum on", "activations kept for backward"):
        assert part in out
    assert "fits 1.0 GiB (--memory 1GiB); largest N that fits:" in out
    assert "time per step: no probe" in out and "# resolved recipe" in out
    got = json.loads(CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False).output)
    memory = got["memory"]
    assert memory["peak_bytes"] == sum(memory["parts"].values()) and memory["settings"]["passes"] == 3
    assert memory["largest_passes"] > 3 and memory["memory_bytes"] == 2**30
    # the same plan from config.json alone (no weights, no tokenizer needed: rule110 rows are tokenized)
    alone = [*args[:1], str(converted / "config-only"), *args[2:], "--json"]
    got2 = json.loads(CliRunner().invoke(cli, alone, catch_exceptions=False).output)
    assert got2["memory"]["parts"] == memory["parts"]
    # warm-up trains the Jet layers only: fewer gradients and optimizer states
    warm = json.loads(CliRunner().invoke(cli, ["warmup", *args[1:], "--json"], catch_exceptions=False).output)
    assert warm["memory"]["parts"]["gradients"] < memory["parts"]["gradients"]
    assert warm["memory"]["settings"]["trainable_patterns"] == ["jet_layers.*"]
    # with the weights, --probe times one step
    probed = CliRunner().invoke(cli, [*args, "--probe"], catch_exceptions=False).output
    assert re.search(r"time per step: [0-9.]+ s \(one step measured by --probe\)", probed)
    bad = CliRunner().invoke(cli, [*args[:-2], "--memory", "lots"])
    assert bad.exit_code != 0 and "--memory 'lots'" in str(bad.exception or bad.output)
