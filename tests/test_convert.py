"""sleepify convert: end to end on tiny checkpoints, the fixtures, and every bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config, Qwen2ForCausalLM

import sleepify  # noqa: F401
from sleepify.cli.main import cli, main
from sleepify.errors import ModelLoadError, SleepifyError
from sleepify.runs import latest_run
from sleepify.stages.convert import convert
from sleepify.weights_io import iter_safetensors, write_safetensors

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
)
SMALL_JET = [
    "conversion.jet.num_heads=2",
    "conversion.jet.head_dim=8",
    "conversion.jet.generator_reduction=4",
]


@pytest.fixture
def qwen_folder(tmp_path):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()
    folder = tmp_path / "tiny-qwen2"
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{}")
    return folder, model


def test_cli_end_to_end(tmp_path, qwen_folder):
    folder, base = qwen_folder
    out = tmp_path / "out"
    args = [
        "convert",
        str(folder),
        "--out",
        str(out),
        "conversion.jet_layers=[0,2]",
        "conversion.loop.start=1",
        "sleep.passes=2",
        *SMALL_JET,
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| block |" in result.output and "parameters:" in result.output
    for name in ("config.json", "model.safetensors", "recipe.yaml", "report.md", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert "sleep.passes=2" in (out / "recipe.yaml").read_text()
    report = (out / "report.md").read_text()
    assert "| 1 | jet[0] | jet (inserted) | no | yes |" in report
    assert "| 0 | base[0] | full attention | yes | no |" in report
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.sleep_passes == 2 and model.config.loop_range == (1, 5)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-5, rtol=0)


def test_default_out_dir_and_latest_pointer(tmp_path, qwen_folder, monkeypatch):
    folder, _ = qwen_folder
    monkeypatch.chdir(tmp_path)
    res = convert(str(folder), overrides=SMALL_JET, log=None)
    assert res.out_dir == tmp_path.joinpath("runs", "tiny-qwen2", "convert").relative_to(tmp_path)
    assert latest_run() == (tmp_path / "runs" / "tiny-qwen2" / "convert").resolve()


@pytest.mark.parametrize("name", ["ouro-tiny", "jet-nemotron-tiny"])
def test_fixtures_convert_function_preserving(tmp_path, fixtures_dir, name):
    src = fixtures_dir / name
    overrides = (
        ["conversion.jet_layers=[1,3]", *SMALL_JET] if name == "ouro-tiny" else ["conversion.loop.start=1"]
    )
    res = convert(str(src), out_dir=tmp_path / "out", overrides=overrides, log=None)
    model = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(src).eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 12))
    kw = {"exit_at_step": base.config.total_ut_steps - 1} if name == "ouro-tiny" else {}
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids, **kw).logits, atol=1e-5, rtol=0)
    if name == "ouro-tiny":
        assert model.config.wake_passes == base.config.total_ut_steps


def test_streaming_io_round_trip(tmp_path):
    tensors = [
        ("a", torch.randn(3, 5)),
        ("b", torch.arange(7, dtype=torch.int64)),
        ("c", torch.randn(4).to(torch.bfloat16)),
        ("d", torch.tensor(2.5)),
    ]
    write_safetensors(tensors, tmp_path, max_shard_size=60)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    got = dict(kv for f in files for kv in iter_safetensors(tmp_path / f))
    for name, t in tensors:
        assert torch.equal(got[name], t)


def test_unknown_alias_suggests():
    with pytest.raises(ModelLoadError, match="did you mean 'ouro-1.4b'"):
        convert("ouro-1.4", log=None)


def test_hub_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face Hub.*local folder"):
        convert("ouro-1.4b", out_dir=tmp_path / "o", log=None)
    result = CliRunner().invoke(cli, ["convert", "some-org/missing-model", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0


def test_unsupported_architecture(tmp_path):
    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(folder)
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match="'gpt2' is not supported.*llama.*ouro.*qwen2"):
        convert(str(folder), out_dir=tmp_path / "o", log=None)


def test_mismatched_weights_listed(tmp_path, qwen_folder):
    folder, model = qwen_folder
    state = {k: v for k, v in model.state_dict().items() if "layers.1.mlp" not in k}
    state["model.extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelLoadError) as err:
        convert(str(folder), out_dir=tmp_path / "o", overrides=SMALL_JET, log=None)
    msg = str(err.value)
    assert "missing keys (3)" in msg and "model.layers.1.mlp.down_proj.weight" in msg
    assert "unexpected keys (1): model.extra.weight" in msg


def test_pickle_only_folder_refused(tmp_path, qwen_folder):
    folder, _ = qwen_folder
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        convert(str(folder), out_dir=tmp_path / "o", log=None)


def test_non_empty_out_refused_unless_overwrite(tmp_path, qwen_folder):
    folder, _ = qwen_folder
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SleepifyError, match="not empty.*--overwrite"):
        convert(str(folder), out_dir=out, overrides=SMALL_JET, log=None)
    assert (out / "keep.txt").is_file()
    result = CliRunner().invoke(cli, ["convert", str(folder), "--out", str(out), "--overwrite", *SMALL_JET])
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_bad_plan_indices(tmp_path, qwen_folder):
    folder, _ = qwen_folder
    with pytest.raises(SleepifyError, match="not base layer indices"):
        convert(str(folder), out_dir=tmp_path / "o", overrides=["conversion.jet_layers=[5]"], log=None)
    with pytest.raises(SleepifyError, match="outside the converted model"):
        convert(str(folder), out_dir=tmp_path / "o", overrides=["conversion.loop.end=9"], log=None)


def test_models_command_lists_aliases():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    for alias in ("ouro-1.4b", "ouro-2.6b-thinking", "jet-nemotron-4b", "qwen2.5-1.5b", "llama-3.2-1b"):
        assert alias in result.output


def _load_then_write(src, out, overrides):
    """Conversion as it was before streaming: every base weight loaded into the model, then written."""
    from transformers import AutoConfig

    import sleepify.stages.convert as c
    from sleepify.config import load_recipe
    from sleepify.runs import torch_dtype

    resolved = load_recipe([], overrides)
    model, _, _ = c._plan_and_build(AutoConfig.from_pretrained(src), resolved, dry_run=False)
    dtype = torch_dtype(resolved.recipe.model.dtype)
    c.load_base_weights(model, src, dtype=dtype)
    c._materialise_rest(model, dtype)
    c._write_model(model, model.config, resolved.recipe, out)


@pytest.mark.parametrize(
    ("name", "dtype"), [("qwen", "float32"), ("qwen", "bfloat16"), ("ouro-tiny", "bfloat16")]
)
def test_streamed_convert_is_bit_identical_to_load_then_write(tmp_path, qwen_folder, request, name, dtype):
    src = qwen_folder[0] if name == "qwen" else request.getfixturevalue("fixtures_dir") / name
    overrides = [f"model.dtype={dtype}", "conversion.jet_layers=[1]", *SMALL_JET]
    torch.manual_seed(3)
    convert(str(src), out_dir=tmp_path / "new", overrides=overrides, log=None)
    torch.manual_seed(3)
    _load_then_write(src, tmp_path / "old", overrides)
    new = sorted(p.name for p in (tmp_path / "new").glob("*.safetensors"))
    assert new == sorted(p.name for p in (tmp_path / "old").glob("*.safetensors"))
    for f in new:  # same header, same bytes: every tensor bit-identical, in the same order
        assert (tmp_path / "new" / f).read_bytes() == (tmp_path / "old" / f).read_bytes()


def test_streamed_convert_reads_one_tensor_at_a_time(tmp_path, qwen_folder, monkeypatch):
    import sleepify.stages.convert as c
    import sleepify.weights_io as ws

    live: list[int] = []
    read = ws.read_tensor

    def counted(ref):
        live.append(ref.nbytes)
        return read(ref)

    monkeypatch.setattr(c, "read_tensor", counted)
    overrides = ["conversion.jet_layers=[1]", *SMALL_JET]
    convert(str(qwen_folder[0]), out_dir=tmp_path / "out", overrides=overrides, log=None)
    # every checkpoint tensor was read once, by the writer (the model never held the base weights)
    header = ws.index_safetensors([qwen_folder[0] / "model.safetensors"])
    assert sorted(live) == sorted(r.nbytes for r in header.values())


def test_dry_run_from_config_json_alone(tmp_path):
    """`convert --dry-run` needs no weights: a folder holding only config.json (it was refused: "holds no
    *.safetensors weights"), with the size from model.safetensors.index.json when there is one."""
    folder = tmp_path / "config-only"
    Qwen2Config(**TINY).save_pretrained(folder)
    result = CliRunner().invoke(cli, ["convert", str(folder), "--dry-run", *SMALL_JET])
    assert result.exit_code == 0, result.output
    assert "weights not read: config.json only" in result.output and "## Resolved recipe" in result.output
    assert not (tmp_path / "runs").exists()
    index = {
        "metadata": {"total_size": 2_869_336_298},
        "weight_map": {"lm_head.weight": "model-1.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    res = convert(str(folder), dry_run=True, log=None, overrides=SMALL_JET)
    assert "2.87 GB of weights per model.safetensors.index.json" in res.report
    # the real run still needs the weights: one line naming the folder
    with pytest.raises(ModelLoadError, match="names model-1.safetensors, not in .*config-only"):
        convert(str(folder), out_dir=tmp_path / "out", log=None, overrides=SMALL_JET)


def test_dry_run_from_the_hub_reads_config_only(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    asked = []

    def fake_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.append(allow_patterns)
        folder = tmp_path / "hub"
        Qwen2Config(**TINY).save_pretrained(folder)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    res = convert("some-org/some-model", dry_run=True, log=None, overrides=SMALL_JET)
    assert res.dry_run and asked == [["config.json", "model.safetensors.index.json"]]
    monkeypatch.undo()  # the real snapshot_download, offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "some-org/missing-model", "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub" in err and len(err.strip().splitlines()) == 1
