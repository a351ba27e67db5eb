"""``sleep.passes_schedule``: validated by the schema, honoured step by step by the loop, logged, kept in
checkpoints and continued by ``--resume``; the shipped curriculum recipe trains for one step."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import sleepify  # noqa: F401  (registers the model types)
from sleepify.config import load_recipe
from sleepify.errors import RecipeError, TrainingError
from sleepify.training.loop import train
from sleepify.training.passes import PassesSchedule
from tests.helpers import invoke, one_thread  # noqa: F401  (fixture)
from tests.training.test_loop import TinyLM, cfg, dataset

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingLM(TinyLM):
    """TinyLM that records the ``config.sleep_passes`` every forward runs with (and uses it: N scales the
    loss, so a wrong N changes the weights). N = 1 until the loop hands it another one."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(sleep_window=8, sleep_passes=1)
        self.passes: list[int] = []

    def forward(self, input_ids, attention_mask, loss_mask):  # noqa: ANN001
        passes = self.config.sleep_passes
        self.passes.append(passes)
        out = super().forward(input_ids, attention_mask, loss_mask)
        out.loss = out.loss * (1.0 + 0.1 * passes)
        return out


def test_schedule_lookup() -> None:
    s = PassesSchedule(((0, 2), (250, 4)))
    assert [s.at(i) for i in (0, 1, 249, 250, 499, 10_000)] == [2, 2, 2, 4, 4, 4]
    assert s.starts_at(250) and not s.starts_at(249)
    assert PassesSchedule.from_list(s.to_list()) == s
    with pytest.raises(TrainingError):
        PassesSchedule(((1, 2),))
    with pytest.raises(TrainingError):
        PassesSchedule(((0, 2), (5, 3), (5, 4)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sleep.passes=4", "sleep.passes_schedule=[{step: 3, passes: 4}]"], "must start at step 0"),
        (
            ["sleep.passes=4", "sleep.passes_schedule=[{step: 0, passes: 2}, {step: 0, passes: 4}]"],
            "strictly",
        ),
        (
            ["sleep.passes=2", "sleep.passes_schedule=[{step: 0, passes: 2}, {step: 5, passes: 4}]"],
            "must equal",
        ),
        (["sleep.passes=4", "sleep.passes_schedule=[{step: 0, passes: 0}]"], "greater than or equal to 1"),
        (["sleep.passes_schedule=[{step: 0, pases: 1}]"], "unknown key 'sleep.passes_schedule.0.pases'"),
        (["sleep.passes_schedule=[]"], "is empty"),
    ],
)
def test_schema_validates_the_schedule(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe([], overrides)


def test_loop_follows_logs_and_resumes_the_schedule(tmp_path: Path) -> None:
    schedule = PassesSchedule(((0, 1), (2, 3)))
    full = RecordingLM()
    train(
        full,
        dataset(),
        cfg(steps=4, micro_batch_size=4),
        tmp_path / "a",
        progress=False,
        passes_schedule=schedule,
    )
    assert full.passes == [1, 1, 3, 3]
    logged = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sleep_passes"] for r in logged] == [1, 1, 3, 3]

    first = RecordingLM()
    run = tmp_path / "b"
    train(first, dataset(), cfg(steps=4, micro_batch_size=4, checkpoint_every=2), run, progress=False,
          passes_schedule=schedule, stop_after=2)  # fmt: skip
    assert first.passes == [1, 1]
    with pytest.raises(TrainingError, match="passes_schedule"):
        train(RecordingLM(), dataset(), cfg(steps=4, micro_batch_size=4), run, resume=True, progress=False,
              passes_schedule=PassesSchedule(((0, 1), (3, 3))))  # fmt: skip
    with pytest.raises(TrainingError, match="passes_schedule"):
        train(RecordingLM(), dataset(), cfg(steps=4, micro_batch_size=4), run, resume=True, progress=False)
    resumed = RecordingLM()
    train(resumed, dataset(), cfg(steps=4, micro_batch_size=4), run, resume=True, progress=False,
          passes_schedule=schedule)  # fmt: skip
    assert resumed.passes == [3, 3]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def tiny_rule110(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("curriculum")
    invoke(["data", "rule110", "--out", str(root / "data"), "--n-train", "16", "--n-test", "4", "--t", "2",
            "--quiet"])  # fmt: skip
    invoke(
        ["convert", "builtin:gdn-hybrid-4-tiny", "--out", str(root / "convert"), "-r", "repro/rule110-cpu"]
    )
    return root


def test_curriculum_recipe_trains_one_step(tiny_rule110: Path) -> None:
    out = tiny_rule110 / "one"
    recipes = ["-r", "repro/rule110-cpu", "-r", "repro/rule110-cpu-curriculum"]
    invoke(["train", str(tiny_rule110 / "convert"), *recipes, "--data", str(tiny_rule110 / "data"),
            "--out", str(out), "--steps", "1", "train.batch_size=4", "train.tensorboard=false"])  # fmt: skip
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["sleep_passes"] for r in logged] == [2]
    stored = yaml.safe_load((out / "recipe.yaml").read_text())
    assert stored["sleep"]["passes_schedule"] == [{"step": 0, "passes": 2}, {"step": 250, "passes": 4}]
    # the trained model keeps the schedule's last N (what eval and generation use)
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.sleep_passes == 4


def test_resume_continues_the_schedule(tiny_rule110: Path) -> None:
    out = tiny_rule110 / "resume"
    recipes = ["-r", "repro/rule110-cpu", "-r", "repro/rule110-cpu-curriculum"]
    cmd = ["train", str(tiny_rule110 / "convert"), *recipes, "--data", str(tiny_rule110 / "data"),
           "--out", str(out), "train.batch_size=4", "train.tensorboard=false",
           "train.log_every=1", "train.checkpoint_every=1",
           "sleep.passes_schedule=[{step: 0, passes: 2}, {step: 1, passes: 4}]"]  # fmt: skip
    invoke([*cmd, "--steps", "1"])
    invoke([*cmd, "--steps", "2", "--resume"])
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["sleep_passes"]) for r in logged] == [(1, 2), (2, 4)]
