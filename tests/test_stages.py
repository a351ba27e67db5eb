"""The stage chain a user types: data -> convert -> warmup -> train (--N) -> resume, on a tiny Qwen2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

import sleepify  # noqa: F401
from sleepify.cli.main import cli, main
from sleepify.errors import SleepifyError
from tests.helpers import float32_muon, invoke  # noqa: F401  (float32_muon: a fixture)

JET = [
    "conversion.jet_layers=[0]",
    "conversion.jet.num_heads=2",
    "conversion.jet.head_dim=8",
    "conversion.jet.generator_reduction=4",
    "sleep.window=24",
    "sleep.eviction=sliding",
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chain")
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
        )
    )
    base.save_pretrained(root / "base")
    invoke(
        [
            "data",
            "rule110",
            "--out",
            str(root / "data"),
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--t",
            "0",
            "--quiet",
        ]
    )
    invoke(["convert", str(root / "base"), "--out", str(root / "run" / "convert"), *JET])
    return root


def test_warmup_then_train_chain(chain: Path) -> None:
    common = [
        "--data",
        str(chain / "data"),
        "--steps",
        "2",
        "train.batch_size=4",
        "train.tensorboard=false",
        "train.log_every=1",
    ]
    invoke(["warmup", str(chain / "run" / "convert"), "--N", "2", *common])
    warm = chain / "run" / "warmup"
    assert (warm / "model" / "config.json").is_file() and (warm / "recipe.yaml").is_file()
    losses = [json.loads(line)["loss"] for line in (warm / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)
    # warm-up trained the inserted Jet layers only
    before = AutoModelForCausalLM.from_pretrained(chain / "run" / "convert")
    after = AutoModelForCausalLM.from_pretrained(warm / "model")
    changed = {
        name
        for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True)
        if not torch.equal(a, b)
    }
    assert changed and all(name.startswith("jet_layers.") for name in changed)
    assert "eviction: hard" in (warm / "recipe.yaml").read_text()

    invoke(["train", str(warm / "model"), "--N", "3", *common, "train.checkpoint_every=1"])
    trained = AutoModelForCausalLM.from_pretrained(chain / "run" / "train" / "model")
    assert trained.config.sleep_passes == 3
    # what warm-up forced does not carry over: train trains everything, with the converted eviction
    stored = yaml.safe_load((chain / "run" / "train" / "recipe.yaml").read_text())
    assert stored["train"]["trainable"] == ["*"] and stored["sleep"]["eviction"] == "sliding"
    changed = {
        name
        for (name, a), (_, b) in zip(after.state_dict().items(), trained.state_dict().items(), strict=True)
        if not torch.equal(a, b)
    }
    assert any(not name.startswith("jet_layers.") for name in changed)
    # resume continues from the last checkpoint to the final step
    longer = [a if a != "2" else "3" for a in common]  # --steps 3
    invoke(["train", str(warm / "model"), "--N", "3", *longer, "--resume"])
    lines = (chain / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_resume_auto_starts_fresh_then_continues(chain: Path) -> None:
    """`--resume auto`: the same command relaunched after a kill continues from the last checkpoint; with
    no checkpoint yet it starts fresh (what a killed attempt logged is discarded)."""
    out = chain / "auto"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n')  # a killed attempt, no checkpoint
    cmd = ["train", str(chain / "run" / "convert"), "--data", str(chain / "data"), "--out", str(out)]
    cmd += ["train.batch_size=4", "train.tensorboard=false", "train.log_every=1", "train.checkpoint_every=1"]
    invoke([*cmd, "--steps", "1", "--resume", "auto"])
    first = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in first] == [1] and json.loads(first[0])["loss"] != 99.0
    invoke([*cmd, "--steps", "2", "--resume", "auto"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first[0] and [json.loads(x)["step"] for x in lines] == [1, 2]
    with pytest.raises(SleepifyError, match="nothing to resume"):
        CliRunner().invoke(cli, [*cmd[:-2], "--out", str(chain / "empty"), "--steps", "1", "--resume"],
                           catch_exceptions=False)  # fmt: skip


def test_stage_errors_are_one_line(chain: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(chain / "run" / "convert"), "--steps", "1"])
    assert result.exit_code != 0
    assert "data.path is not set" in str(result.exception) or "data.path is not set" in result.output


@pytest.mark.slow
def test_train_nproc_2_equals_single_process(chain: Path) -> None:
    common = [str(chain / "run" / "convert"), "--data", str(chain / "data"), "--steps", "2", "--N", "2"]
    common += ["train.batch_size=4", "train.tensorboard=false", "train.log_every=1"]
    invoke(["train", *common, "--out", str(chain / "single")])
    invoke(["train", *common, "--out", str(chain / "ddp"), "--nproc", "2"])

    def losses(run: str) -> list[float]:
        return [json.loads(x)["loss"] for x in (chain / run / "metrics.jsonl").read_text().splitlines()]

    assert losses("ddp") == pytest.approx(losses("single"), abs=1e-5)
    assert (chain / "ddp" / "model" / "config.json").is_file()


@pytest.mark.parametrize("old", [True, False])
def test_fsdp_with_recompute_on_old_torch_is_one_line(
    chain: Path, old: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch 2.9 / 2.10 fail inside FSDP2 + activation checkpointing: refused before torchrun starts."""
    import sleepify.cli.train_cmd as stage
    import sleepify.training.parallel as parallel

    monkeypatch.setattr(parallel, "_torch_version", lambda: (2, 10))
    launched: list[list[str]] = []
    monkeypatch.setattr(stage, "launch_torchrun", lambda nproc, args: launched.append(args))
    out = chain / "fsdp-old"
    args = ["train", str(chain / "run" / "convert"), "--data", str(chain / "data"), "--steps", "1",
            "--out", str(out), "--nproc", "2", "train.distributed=fsdp"]  # fmt: skip
    if not old:  # without the per-window recompute (or with DDP) FSDP works there
        args.append("sleep.checkpoint_windows=false")
    if not old:
        main(args)
        assert len(launched) == 1
        return
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and not launched and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs torch >= 2.11" in err[0] and "train.distributed=ddp" in err[0]


@pytest.mark.slow
@pytest.mark.usefixtures("float32_muon")
def test_train_fsdp_2_ranks_equals_single_process(chain: Path) -> None:
    """FSDP2 (train.distributed=fsdp): sharded weights, Muon on DTensors, N = 2 sleep passes calling each
    sharded block several times per step — same losses and final weights as one process. Like with like:
    both runs orthogonalise in float32 (``float32_muon``; torch's bfloat16 Newton–Schulz rounds differently
    when DTensor splits the matmuls, by a fraction of one update)."""
    common = [str(chain / "run" / "convert"), "--data", str(chain / "data"), "--steps", "3", "--N", "2"]
    common += [
        "train.batch_size=4",
        "train.micro_batch_size=1",
        "train.tensorboard=false",
        "train.log_every=1",
    ]
    from sleepify.training.parallel import fsdp_recompute_supported

    if not fsdp_recompute_supported():  # refused there (test above): FSDP without recompute
        common.append("sleep.checkpoint_windows=false")
    invoke(["train", *common, "--out", str(chain / "single3")])
    invoke(["train", *common, "--out", str(chain / "fsdp"), "--nproc", "2", "train.distributed=fsdp"])

    def losses(run: str) -> list[float]:
        return [json.loads(x)["loss"] for x in (chain / run / "metrics.jsonl").read_text().splitlines()]

    # bf16 Muon rounding (see below) moves the third step's loss by up to ~2e-5 (seen with the spread init)
    assert losses("fsdp") == pytest.approx(losses("single3"), abs=1e-5)
    single = AutoModelForCausalLM.from_pretrained(chain / "single3" / "model")
    sharded = AutoModelForCausalLM.from_pretrained(chain / "fsdp" / "model")
    assert sharded.config.architectures == single.config.architectures == ["SleepHybridForCausalLM"]
    reference = single.state_dict()
    for name, value in sharded.state_dict().items():
        torch.testing.assert_close(value, reference[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_config_without_pad_token_id_trains_and_evaluates(tmp_path: Path) -> None:
    """transformers v5 configs may lack ``pad_token_id`` altogether (a converted Jet-Nemotron's does):
    warmup and eval read it through ``stages.common.pad_id`` (they raised AttributeError; found by
    benchmarks/bench_scale.py --model jet-nemotron-2b)."""
    from transformers import AutoConfig

    jet = {"num_heads": 2, "head_dim": 16, "expand_v": 2, "conv_size": 4, "dconv_generator_reduction": 4,
           "norm_eps": "1e-5"}  # fmt: skip
    config = AutoConfig.for_model(
        "jet_nemotron", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, layer_types=["jet", "attn", "swa", "jet"],
        efficient_attention_config={"jet": jet, "swa": {"window_size": 8}},
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    invoke(["data", "rule110", "--out", str(tmp_path / "data"), "--n-train", "4", "--n-test", "2", "--t", "0",
            "--quiet"])  # fmt: skip
    invoke(["convert", str(tmp_path / "base"), "--out", str(tmp_path / "run" / "convert"),
            "conversion.loop.start=1", "conversion.loop.end=3"])  # fmt: skip
    assert "pad_token_id" not in json.loads((tmp_path / "run" / "convert" / "config.json").read_text())
    invoke(["warmup", str(tmp_path / "run" / "convert"), "--data", str(tmp_path / "data"), "--steps", "1",
            "train.batch_size=2", "--quiet"])  # fmt: skip
    invoke(["eval", str(tmp_path / "run" / "warmup"), "--max-examples", "2", "--no-plot", "--quiet"])
