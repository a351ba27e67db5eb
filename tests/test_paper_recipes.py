"""The paper-settings recipes (``recipes/paper/``): each carries the paper's numbers, validates, and runs one
optimizer step through the real CLI chain (``sleepify data`` -> ``convert -r paper/X`` -> ``warmup`` /
``train -r paper/X``) on a tiny stand-in model and tiny data; the run's stored ``recipe.yaml`` keeps every
value of the paper recipe that the test did not override."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

import sleepify  # noqa: F401  (registers the model types)
from sleepify.config import available_recipes, load_recipe, recipe_from_run
from tests.helpers import invoke, one_thread  # noqa: F401  (fixture)

PAPER = sorted(name for name in available_recipes() if name.startswith("paper/"))

# a Jet layer small enough for the stand-ins (hidden size 32)
TINY_JET = ["conversion.jet.num_heads=2", "conversion.jet.head_dim=8", "conversion.jet.generator_reduction=4"]
# every run: one optimizer step on two examples, no TensorBoard
ONE_STEP = ["--steps", "1", "train.batch_size=2", "train.tensorboard=false", "train.log_every=1"]
# keys that convert records from the model when no recipe sets them (the stored recipe is the recipe as run:
# Ouro's wake passes are its total_ut_steps, not the schema default 1)
PLANNED = {"sleep.wake_passes"}
# CLI flags -> the recipe key they set
FLAGS = {"--steps": "train.steps", "--data": "data.path", "--N": "sleep.passes", "--L": "sleep.window"}


pytestmark = pytest.mark.usefixtures("one_thread")


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def overridden(args: list[str]) -> set[str]:
    """The recipe keys a command line sets (``key.sub=value`` arguments and shorthand flags)."""
    keys = {FLAGS[a] for a in args if a in FLAGS}
    keys |= {a.partition("=")[0] for a in args if "=" in a and not a.startswith("-")}
    return keys


def assert_keeps_paper_values(run_dir: Path, name: str, args: list[str]) -> dict[str, Any]:
    """Every key of the resolved paper recipe that ``args`` did not override is stored unchanged."""
    paper = flatten(load_recipe(name).to_dict())
    stored = flatten(recipe_from_run(run_dir))
    skip = overridden(args) | PLANNED
    kept = {k: v for k, v in paper.items() if not any(k == s or k.startswith(s + ".") for s in skip)}
    assert kept, name
    differ = {k: (v, stored.get(k)) for k, v in kept.items() if stored.get(k) != v}
    assert not differ, f"{name}: stored values differ from the recipe (recipe, stored): {differ}"
    return stored


# ------------------------------------------------------------------------------------------ the paper values


def test_paper_recipes_carry_the_papers_settings() -> None:
    """The numbers of the paper's §6 "Experiment details", §6.1-6.4 (and the token budget of Fig. 2b)."""
    r = {name.removeprefix("paper/"): load_recipe(name).recipe for name in PAPER}
    assert set(r) >= {
        "rule110-t32",
        "depo",
        "gsm-ouro-1.4b",
        "gsm-jet-nemotron-2b",
        "gsm-sliding-ouro-1.4b-warmup",
        "gsm-sliding-ouro-1.4b",
    }
    for name, rec in r.items():
        assert rec.description, name
        assert rec.train.optimizer.adamw_lr == pytest.approx(5e-5), name  # fixed in every experiment
        assert rec.sleep.passes == 1, name  # the no-loop baseline; the sweeps pass --N
        assert rec.train.seed == 0, name  # one seed => the same data order for every N

    rule = r["rule110-t32"]
    assert rule.model.source == "builtin:gdn-hybrid-4"
    assert (rule.sleep.window, rule.sleep.eviction, rule.train.batch_size) == (24, "hard", 512)
    assert rule.train.optimizer.muon_lr == pytest.approx(2e-3)
    assert 5e9 * 0.9 < rule.train.steps * 512 * 103 <= 5e9  # "nearly 5B training tokens"

    depo = r["depo"]
    assert depo.model.source == "builtin:jet-hybrid-10"
    assert (depo.sleep.window, depo.sleep.eviction, depo.train.batch_size) == (75, "hard", 128)
    assert depo.train.optimizer.muon_lr == pytest.approx(2e-3)
    assert depo.train.steps == 100_000  # not the default 100: Rule 110's ~5B-token budget (issue 14)

    for name in ("gsm-ouro-1.4b", "gsm-jet-nemotron-2b"):
        rec = r[name]
        assert (rec.sleep.window, rec.sleep.eviction, rec.train.batch_size) == (2000, "hard", 256), name
        assert rec.train.optimizer.muon_lr == pytest.approx(1e-3), name
        assert rec.train.trainable == ["*"], name
    ouro = r["gsm-ouro-1.4b"]
    assert ouro.model.source == "ByteDance/Ouro-1.4B"
    assert len(ouro.conversion.jet_layers) == 6  # "we insert 6 Jet layers without MLP layers"
    assert (ouro.conversion.loop.start, ouro.conversion.loop.end) == (0, None)  # the whole stack loops
    jet = r["gsm-jet-nemotron-2b"]
    assert jet.model.source == "jet-ai/Jet-Nemotron-2B" and jet.conversion.jet_layers == []
    assert jet.conversion.loop.end - jet.conversion.loop.start == 14  # "the middle 14 blocks out of 28"
    assert jet.conversion.loop.start == 7

    warm, full = r["gsm-sliding-ouro-1.4b-warmup"], r["gsm-sliding-ouro-1.4b"]
    for rec in (warm, full):
        assert rec.model.source == "ByteDance/Ouro-1.4B" and len(rec.conversion.jet_layers) == 6
        assert (rec.sleep.window, rec.train.batch_size) == (512, 256)
        assert rec.train.optimizer.muon_lr == pytest.approx(1e-3)
    assert (warm.stage, warm.sleep.eviction, warm.train.trainable) == ("warmup", "hard", ["jet_layers.*"])
    assert (full.stage, full.sleep.eviction, full.train.trainable) == ("train", "sliding", ["*"])
    assert full.train.steps == 2 * warm.train.steps  # one epoch of warm-up, two epochs of training
    assert warm.train.steps * warm.train.batch_size == 51_200  # = the n_train of the documented data command
    assert "--n-train 51200" in (available_recipes()["paper/gsm-sliding-ouro-1.4b-warmup"]).read_text()


# ------------------------------------------------------------------------------------------ tiny stand-ins


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny datasets of the three tasks and tiny Ouro / Jet-Nemotron base models (vocab 100 = the character
    tokenizer) standing in for Ouro-1.4B and Jet-Nemotron-2B."""
    from sleepify.models.jet_nemotron import JetNemotronConfig, JetNemotronForCausalLM
    from sleepify.models.ouro import OuroConfig, OuroForCausalLM

    root = tmp_path_factory.mktemp("paper")
    common = ["--n-train", "8", "--n-test", "4", "--quiet"]
    invoke(["data", "rule110", "--out", str(root / "rule110"), "--t", "32", *common])
    depo = ["--max-nodes", "8", "--n-queries", "2", "--max-k", "4"]
    invoke(["data", "depo", "--out", str(root / "depo"), *depo, *common])
    gsm = ["--min-tokens", "120", "--max-tokens", "200", "--max-ops", "2"]
    invoke(["data", "gsm-infinite", "--out", str(root / "gsm"), *gsm, *common])

    small = dict(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    OuroForCausalLM(OuroConfig(**small, num_hidden_layers=2, head_dim=8, total_ut_steps=2)).save_pretrained(
        root / "ouro"
    )
    jet_cfg = JetNemotronConfig(
        **small,
        num_hidden_layers=4,
        layer_types=["attn", "jet", "jet", "attn"],
        efficient_attention_config={
            "jet": {
                "num_heads": 2,
                "head_dim": 8,
                "expand_v": 2.0,
                "conv_size": 4,
                "dconv_generator_reduction": 4,
                "norm_eps": "1e-5",
            }
        },
    )
    JetNemotronForCausalLM(jet_cfg).save_pretrained(root / "jet-nemotron")
    return root


# recipe -> (convert's MODEL argument (the stand-in) and overrides, data folder, overrides for the tiny run)
STANDINS: dict[str, tuple[list[str], str, list[str]]] = {
    "paper/rule110-t32": (["builtin:gdn-hybrid-4-tiny"], "rule110", []),
    "paper/depo": (["builtin:jet-hybrid-10-tiny"], "depo", []),
    "paper/gsm-ouro-1.4b": (
        ["{root}/ouro", "conversion.jet_layers=[1]", *TINY_JET],
        "gsm",
        ["sleep.window=48"],
    ),
    # 4 blocks: the middle two loop, as the middle 14 of Jet-Nemotron-2B's 28
    "paper/gsm-jet-nemotron-2b": (
        ["{root}/jet-nemotron", "conversion.loop.start=1", "conversion.loop.end=3"],
        "gsm",
        ["sleep.window=48"],
    ),
}


def convert_args(name: str, root: Path, out: Path) -> list[str]:
    stand_in = [a.format(root=root) for a in STANDINS[name][0]]
    return ["convert", *stand_in, "-r", name, "--out", str(out)]


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_one_step_on_a_tiny_stand_in(root: Path, name: str) -> None:
    run = root / name.replace("/", "-")
    convert_args_ = convert_args(name, root, run / "convert")
    invoke(convert_args_)
    _, data, extra = STANDINS[name]
    args = [str(run / "convert"), "-r", name, "--data", str(root / data), *ONE_STEP, *extra]
    invoke(["train", *args])
    assert (run / "train" / "model" / "config.json").is_file()
    assert (run / "train" / "checkpoints").is_dir()
    skip = args + convert_args_[1:]  # the stand-in's conversion overrides are stored too
    stored = assert_keeps_paper_values(run / "train", name, skip)
    assert stored["train.steps"] == 1 and stored["train.batch_size"] == 2
    model = AutoModelForCausalLM.from_pretrained(run / "train" / "model")
    recipe = load_recipe(name).recipe
    assert (model.config.sleep_passes, model.config.eviction) == (recipe.sleep.passes, recipe.sleep.eviction)


def test_sliding_window_two_stages(root: Path) -> None:
    """§6.4: Jet-only warm-up with hard eviction, then full training with sliding eviction, at N = 2 (as in
    the documented sweep), on a tiny Ouro."""
    warm_name, train_name = "paper/gsm-sliding-ouro-1.4b-warmup", "paper/gsm-sliding-ouro-1.4b"
    run = root / "sliding"
    conv = ["convert", str(root / "ouro"), "conversion.jet_layers=[1]", *TINY_JET, "-r", warm_name]
    invoke([*conv, "--out", str(run / "convert")])
    common = ["--data", str(root / "gsm"), "--N", "2", *ONE_STEP, "sleep.window=48"]

    warm_args = [str(run / "convert"), "-r", warm_name, *common, "--out", str(run / "warmup")]
    invoke(["warmup", *warm_args])
    stored = assert_keeps_paper_values(run / "warmup", warm_name, warm_args + conv[2:])
    assert stored["sleep.eviction"] == "hard" and stored["train.trainable"] == ["jet_layers.*"]

    train_args = [str(run / "warmup" / "model"), "-r", train_name, *common, "--out", str(run / "train")]
    invoke(["train", *train_args])
    stored = assert_keeps_paper_values(run / "train", train_name, train_args + conv[2:])
    assert stored["sleep.eviction"] == "sliding" and stored["sleep.passes"] == 2

    def changed(a: Path, b: Path) -> set[str]:
        sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
        sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
        return {k for k in sa if not torch.equal(sa[k], sb[k])}

    warmed = changed(run / "convert", run / "warmup" / "model")
    assert warmed and all(k.startswith("jet_layers.") for k in warmed)  # warm-up: Jet layers only
    trained = changed(run / "warmup" / "model", run / "train" / "model")
    assert any(not k.startswith("jet_layers.") for k in trained)  # then the full model
    model = AutoModelForCausalLM.from_pretrained(run / "train" / "model")
    assert (model.config.eviction, model.config.sleep_passes) == ("sliding", 2)


def test_every_paper_recipe_is_run_here() -> None:
    """A new recipes/paper/*.yaml needs a stand-in above."""
    ran = set(STANDINS) | {"paper/gsm-sliding-ouro-1.4b-warmup", "paper/gsm-sliding-ouro-1.4b"}
    assert set(PAPER) == ran
