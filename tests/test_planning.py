"""The conversion plan: the default rules (checked against hand-computed sizes and the paper's settings),
alias recipes kept as they are, the budget, ``--dry-run`` = the real run, unsupported architectures."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import (
    GPT2Config,
    LlavaConfig,
    MixtralConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3MoeConfig,
    T5Config,
)

import sleepify  # noqa: F401
from sleepify.cli.main import cli, main
from sleepify.config import load_recipe
from sleepify.planning import plan_conversion
from sleepify.stages.convert import convert

DEFAULTS = load_recipe().recipe


def ouro_1_4b():
    from sleepify.models.ouro import OuroConfig

    return OuroConfig(
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=128,
        intermediate_size=5632,
        vocab_size=49152,
        total_ut_steps=4,
    )


def jet_layer_params(H: int, heads: int, dk: int, expand_v: float = 2.0, W: int = 4, r: int = 8) -> int:
    """One inserted layer counted by hand from Jet-Nemotron's JetBlock (reference/architectures.md §2):
    q, k [H -> heads·dk]; v, g [H -> V]; o [V -> H]; a, b [H -> heads]; A_log, dt_bias [heads]; kernel
    generator H -> V/r (no bias) -> V·W (+ bias); gated RMSNorm over a value head; the block's RMSNorm [H]."""
    K, dv = heads * dk, int(dk * expand_v)
    V = heads * dv
    return (
        2 * H * K
        + 2 * H * V
        + V * H
        + 2 * H * heads
        + 2 * heads
        + H * (V // r)
        + (V // r) * V * W
        + V * W
        + dv
        + H
    )


def test_default_plan_for_ouro_is_the_papers() -> None:
    """Ouro-1.4B without a recipe: 6 Jet layers (after every 4th block) of 8 heads x 128, whole stack looped,
    under 10 % more parameters (paper §6.3), wake passes = its 4 recurrent steps."""
    plan = plan_conversion(ouro_1_4b(), DEFAULTS)
    assert plan.jet_layers == [3, 7, 11, 15, 19, 23]
    assert (plan.jet["num_heads"], plan.jet["head_dim"], plan.jet["expand_v"]) == (8, 128, 2.0)
    assert plan.jet_layer_params == jet_layer_params(2048, 8, 128)
    # Ouro-1.4B's parameters (reference/architectures.md §1.2: 1.4347B)
    assert abs(plan.base_params - 1.4347e9) < 1e6
    assert 0.08 < plan.growth < 0.10
    assert plan.loop_range == (0, 30) and plan.wake_passes == 4
    assert "pretrained looped" in plan.sources["conversion.loop"]


def test_default_plan_loops_the_middle_half() -> None:
    """A 28-block attention model: Jet layers after 3, 7, ..., 27; the middle 14 base blocks loop (7..20, as
    the paper loops Jet-Nemotron-2B's), with the Jet layers inserted after them."""
    base = Qwen2Config(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        tie_word_embeddings=True,
    )
    plan = plan_conversion(base, DEFAULTS)
    assert plan.jet_layers == [3, 7, 11, 15, 19, 23, 27]
    start, end = plan.loop_range
    looped = plan.block_plan[start:end]
    assert [e["index"] for e in looped if e["type"] == "base"] == list(range(7, 21))
    assert [e["index"] for e in looped if e["type"] == "jet"] == [1, 2, 3, 4]  # after blocks 7, 11, 15, 19
    assert plan.jet["head_dim"] == 128 and plan.jet["num_heads"] == 6  # half of 12 heads, base head dim


def test_jet_nemotron_gets_no_jet_layers_and_its_middle_14() -> None:
    from sleepify.models.jet_nemotron import JetNemotronConfig

    types = ["jet"] * 14 + ["attn"] + ["jet"] * 4 + ["attn", "swa", "swa"] + ["jet"] * 6
    cfg = JetNemotronConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=28,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        layer_types=types,
        efficient_attention_config={"jet": {"num_heads": 2, "head_dim": 16}, "swa": {"window_size": 8}},
    )
    plan = plan_conversion(cfg, DEFAULTS)
    assert plan.jet_layers == [] and plan.loop_range == (7, 21)
    assert "already has SSM layers" in plan.sources["conversion.jet_layers"]


def test_alias_recipe_keeps_its_settings() -> None:
    rec = load_recipe("models/ouro-1.4b").recipe
    plan = plan_conversion(ouro_1_4b(), rec)
    assert plan.jet_layers == rec.conversion.jet_layers and plan.jet["num_heads"] == 8
    assert plan.loop_range == (0, 30) and plan.window == 2000
    for key in ("conversion.jet_layers", "conversion.jet.num_heads", "conversion.loop", "sleep.window"):
        assert plan.sources[key] == "recipe", key


def test_budget_shrinks_heads_then_layers() -> None:
    base = Qwen2Config(
        hidden_size=256,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=512,
        vocab_size=512,
    )
    wide = plan_conversion(base, load_recipe(overrides=["conversion.max_param_growth=1.0"]).recipe)
    assert (wide.jet_layers, wide.jet["num_heads"]) == ([3, 7, 11, 15], 4)
    for budget in (0.10, 0.05, 0.02):
        plan = plan_conversion(base, load_recipe(overrides=[f"conversion.max_param_growth={budget}"]).recipe)
        assert plan.growth <= budget
        assert plan.jet_layer_params == jet_layer_params(256, plan.jet["num_heads"], 32)
    tight = plan_conversion(base, load_recipe(overrides=["conversion.max_param_growth=0.02"]).recipe)
    assert len(tight.jet_layers) < 4 and tight.jet["num_heads"] == 1
    # over budget even at one layer of one head: the smallest plan, flagged in the report
    tiny = plan_conversion(base, load_recipe(overrides=["conversion.max_param_growth=0.0001"]).recipe)
    assert len(tiny.jet_layers) == 1 and tiny.jet["num_heads"] == 1
    assert any("EXCEEDED" in line for line in tiny.summary())


@pytest.fixture
def qwen_folder(tmp_path):
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.mark.parametrize("overrides", [[], ["conversion.jet_layers=[2]", "conversion.jet.num_heads=2"]])
def test_dry_run_is_what_the_run_does(tmp_path, qwen_folder, monkeypatch, overrides) -> None:
    import sleepify.stages.convert as convert_module

    def no_weights(*args, **kwargs):
        raise AssertionError("a dry run read weights")

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(convert_module, "read_tensor", no_weights)
        m.setattr(convert_module, "index_safetensors", no_weights)
        dry = convert(str(qwen_folder), out_dir=out, overrides=overrides, log=None, dry_run=True)
    assert dry.dry_run and not out.exists()
    real = convert(str(qwen_folder), out_dir=out, overrides=overrides, log=None)
    assert dry.block_table == real.block_table
    assert (dry.params_before, dry.params_after) == (real.params_before, real.params_after)
    assert dry.plan.sources == real.plan.sources and dry.plan.jet == real.plan.jet
    # the resolved recipe printed = the one stored with the model, which rebuilds the same config
    stored = yaml.safe_load((out / "recipe.yaml").read_text())
    assert stored == dry.recipe.to_dict()

    # the printed plan is the real report, but for the output line
    def plan_lines(report: str) -> list[str]:
        return [
            x for x in report.split("\n## Resolved recipe")[0].splitlines() if not x.startswith("- output:")
        ]

    assert plan_lines(dry.report) == plan_lines(real.report)
    rerun = convert(str(out.parent / "tiny"), recipe=str(out / "recipe.yaml"), log=None, dry_run=True)
    assert rerun.block_table == real.block_table and rerun.plan.jet == real.plan.jet
    assert all(v == "recipe" for k, v in rerun.plan.sources.items() if k.startswith("conversion."))


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path, qwen_folder) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(qwen_folder), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = result.output
    for part in ("| block |", "Jet size:", "loop: blocks", "parameters:", "memory:", "## Resolved recipe"):
        assert part in text, part
    assert "[default: one after every 4th base block]" in text and not out.exists()


@pytest.mark.parametrize(
    ("config", "why"),
    [
        (MixtralConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=16, vocab_size=32), "mixture"),
        (Qwen3MoeConfig(num_hidden_layers=1, hidden_size=16, vocab_size=32), "mixture"),
        (T5Config(num_layers=1, d_model=16, vocab_size=32), "encoder-decoder"),
        (LlavaConfig(), "multimodal"),
        (GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16), None),
    ],
)
def test_unsupported_architectures_one_line(tmp_path, capsys, config, why) -> None:
    folder = tmp_path / "m"
    config.save_pretrained(folder)  # no weights needed: the architecture is refused first
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(folder), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{config.model_type!r}" in err
    assert "gemma3_text" in err and "mistral" in err and "qwen2" in err
    if why:
        assert why in err


def test_models_lists_aliases_builtins_and_families() -> None:
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    for name in ("ouro-1.4b", "builtin:gdn-hybrid-4", "builtin:jet-hybrid-10-tiny", "gemma3_text", "phi3"):
        assert name in result.output, name


@pytest.mark.parametrize("name", ["ouro-tiny", "jet-nemotron-tiny"])
def test_fixtures_with_no_recipe(tmp_path, fixtures_dir, name) -> None:
    """The upstream-written fixtures with no recipe: Ouro gets Jet layers and loops its whole stack,
    Jet-Nemotron (already a hybrid) none and its middle half; both compute the upstream logits."""
    from transformers import AutoModelForCausalLM

    src = fixtures_dir / name
    res = convert(str(src), out_dir=tmp_path / "out", log=None)
    model = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(src).eval()
    n = base.config.num_hidden_layers
    if name == "ouro-tiny":
        assert res.plan.jet_layers and res.plan.loop_range == (0, n + len(res.plan.jet_layers))
        assert 0 < res.plan.growth <= 0.10
        kw = {"exit_at_step": base.config.total_ut_steps - 1}
    else:
        assert res.plan.jet_layers == [] and res.plan.loop_range == (n // 4, n - n // 4)
        kw = {}
    ids = torch.randint(0, base.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids, **kw).logits, atol=1e-5, rtol=0)
