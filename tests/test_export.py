"""sleepify export: a clean HF folder (shards, config, tokenizer, generation config, model card) that loads
with bit-identical logits; written atomically; --push-to-hub at the huggingface_hub boundary."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import sleepify  # noqa: F401
from sleepify.cli.main import cli
from sleepify.config import load_recipe
from sleepify.data.tokenizer import build_char_tokenizer
from sleepify.errors import SleepifyError
from sleepify.runs import read_provenance, resolve_run
from sleepify.stages.export import export
from tests.test_generation import build_tiny_run, perturb_jet
from tests.test_remote_code import minimal_site  # noqa: F401  (a fixture)

# a 1x1 PNG
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)
EVAL = {
    "task": "rule110",
    "model": "runs/tiny/train/model",
    "buckets": [
        {"t": 0, "accuracy": 1.0, "loss": 0.01, "n": 8},
        {"t": 4, "accuracy": 0.625, "loss": 0.4, "n": 8},
    ],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/tiny/{convert, warmup/model, train/model, eval/} with real provenance headers."""
    root = tmp_path_factory.mktemp("export")
    (root / "base").mkdir()
    (root / "base" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny base\n")
    convert_dir = build_tiny_run(root)
    run_dir = root / "runs" / "tiny"
    run_dir.parent.mkdir()
    shutil.move(str(convert_dir.parent), str(run_dir))
    model = AutoModelForCausalLM.from_pretrained(run_dir / "convert")
    tok = AutoTokenizer.from_pretrained(run_dir / "convert")
    for i, stage in enumerate(("warmup", "train")):
        perturb_jet(model, seed=10 + i)
        overrides = [f"sleep.passes={2 + i}", "train.steps=3", f"data.path={root / 'data'}"]
        resolved = load_recipe([], overrides)
        resolved.save(run_dir / stage, stage=stage)
        model.config.sleep_passes = 2 + i
        model.save_pretrained(run_dir / stage / "model")
        tok.save_pretrained(run_dir / stage / "model")
        resolved.save(run_dir / stage / "model", stage=stage)
    (root / "data").mkdir()
    (root / "data" / "meta.json").write_text(json.dumps({"task": "rule110"}))
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "eval.json").write_text(json.dumps(EVAL))
    (run_dir / "eval" / "accuracy.png").write_bytes(PNG)
    return run_dir


def front_matter(readme: Path) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", readme.read_text(), re.S)
    assert m, readme.read_text()[:200]
    return yaml.safe_load(m.group(1))


def hub_metadata(readme: Path) -> dict:
    """The card's metadata as huggingface_hub parses it, checked against the rules every export keeps
    (``RepoCard.validate`` needs the Hub, so the rules are checked here)."""
    card = ModelCard.load(readme)
    meta = card.data.to_dict()
    assert meta == front_matter(readme)  # plain YAML, nothing huggingface_hub reads differently
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"sleepify", "custom_code", "sleep-hybrid"} <= set(meta["tags"])
    assert meta["license"]
    if "base_model" in meta:
        validate_repo_id(meta["base_model"])
        assert meta["base_model"].count("/") == 1 and not Path(meta["base_model"]).exists()
    for dataset in meta.get("datasets") or []:
        validate_repo_id(dataset)
    return meta


def test_resolve_run(run: Path) -> None:
    assert resolve_run(run) == ((run / "train" / "model").resolve(), run.resolve())
    assert resolve_run(run / "warmup") == ((run / "warmup" / "model").resolve(), run.resolve())
    assert resolve_run(run / "convert") == ((run / "convert").resolve(), run.resolve())
    with pytest.raises(SleepifyError, match="no such"):
        resolve_run(run / "nope")


def test_export_cli_folder_card_and_identical_logits(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        cli, ["export", str(run), "--out", str(out), "--max-shard-size", "40KB"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    # sharded safetensors with an index, config, tokenizer, generation config, card, recipe, eval
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert len(shards) > 1 and "model.safetensors.index.json" in names
    assert all((out / s).stat().st_size <= 60_000 for s in shards)
    assert {"config.json", "generation_config.json", "README.md", "recipe.yaml", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sleep_hybrid"
    assert (config["sleep_window"], config["sleep_passes"], config["eviction"]) == (8, 3, "hard")
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == 2 and gen.pad_token_id == 0

    trained = AutoModelForCausalLM.from_pretrained(run / "train" / "model").eval()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(4, 100, (2, 21))
    with torch.no_grad():
        a = trained(ids, logits="all").logits
        b = loaded(ids, logits="all").logits
    assert torch.equal(a, b)
    assert AutoTokenizer.from_pretrained(out)("ab\n").input_ids == build_char_tokenizer()("ab\n").input_ids

    meta = hub_metadata(out / "README.md")
    assert meta["license"] == "apache-2.0"  # the base folder's card
    assert "qwen2" in meta["tags"] and "jet-block" in meta["tags"]  # the base family; one Jet layer
    # a converted local folder: no base_model, its path in the provenance (the convert recipe keeps it)
    base = (run.parent.parent / "base").resolve()
    assert "base_model" not in meta and "datasets" not in meta  # the training data is a local folder
    assert read_provenance(run / "convert" / "recipe.yaml")["recipe"]["model"]["source"] == str(base)
    card = (out / "README.md").read_text()
    assert f"Converted from: the local folder `{base}`" in card
    assert "| inserted Jet layers (block positions) | 1, at [1] |" in card
    assert "| looped blocks (`loop_start`, `loop_end`) | [0, 3) |" in card
    assert "| eviction | hard |" in card and "| sleep passes N (`sleep_passes`) | 3 |" in card
    assert "Recipe chain: convert -> warmup -> train." in card
    assert "`sleep.passes=3`" in card and "`conversion.jet_layers=[0]`" in card  # overrides of the stages
    assert "| t | accuracy | loss | n |" in card and "| 4 | 0.625 | 0.4 | 8 |" in card
    assert "![evaluation](eval/accuracy.png)" in card and (out / "eval" / "accuracy.png").read_bytes() == PNG
    assert "sleepify data rule110" in card
    assert read_provenance(out / "recipe.yaml")["stage"] == "train"


def test_export_bf16_and_no_eval(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    export(run / "warmup", out, dtype="bf16", log=None)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    ref = AutoModelForCausalLM.from_pretrained(run / "warmup" / "model").to(torch.bfloat16)
    for (n, p), (_, q) in zip(ref.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    card = (out / "README.md").read_text()
    assert "weights dtype | bfloat16" in card
    # the warmup folder's run has an eval too; a model folder outside any run has none
    lone = tmp_path / "lone"
    shutil.copytree(run / "convert", lone)
    out2 = tmp_path / "lone-export"
    export(lone, out2, log=None)
    card = (out2 / "README.md").read_text()
    assert (
        "No evaluation was recorded" in card and hub_metadata(out2 / "README.md")["license"] == "apache-2.0"
    )
    assert "base_model" not in hub_metadata(out2 / "README.md")
    assert "Recipe chain: convert." in card


def test_export_is_atomic(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sleepify.stages.export as ex

    out = tmp_path / "out"

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "model_card", boom)
    with pytest.raises(KeyboardInterrupt):
        export(run, out, log=None)
    assert list(tmp_path.iterdir()) == []  # no half folder, no temporary folder
    # an existing export is replaced only once the new one is complete
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(SleepifyError, match="not empty"):
        export(run, out, log=None)
    with pytest.raises(KeyboardInterrupt):
        export(run, out, overwrite=True, log=None)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "old"
    monkeypatch.undo()
    export(run, out, overwrite=True, log=None)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_export_push_to_hub(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(
        HfApi, "whoami", lambda self, **kw: calls.append(("whoami", self.token)) or {"name": "al"}
    )
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or repo_id
    )
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: SimpleNamespace(private=True))
    monkeypatch.setattr(
        HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(("branch", repo_id, kw))
    )
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, **kw: calls.append(("upload", kw["repo_id"], kw)) or SimpleNamespace(pr_url="PR-URL"),
    )
    out = tmp_path / "pushed"
    args = ["export", str(run), "--out", str(out), "--push-to-hub", "tiny-sleep", "--private"]
    args += ["--revision", "v1", "--create-pr", "--token", "hf_tok"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # the bare name is resolved once, before the card is written; then the push
    assert [c[0] for c in calls] == ["whoami", "create", "branch", "upload"] and calls[0][1] == "hf_tok"
    assert calls[1][1] == "al/tiny-sleep" and calls[1][2]["private"] is True
    assert calls[2][2]["branch"] == "v1"
    upload = calls[3][2]
    assert Path(upload["folder_path"]) == out and upload["create_pr"] is True and upload["revision"] == "v1"
    assert 'model_id = "al/tiny-sleep"' in (out / "README.md").read_text()
    assert "PR-URL" in result.output


def test_export_then_unreachable_hub_keeps_export(run: Path, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as const

    monkeypatch.setattr(const, "HF_HUB_OFFLINE", True)
    out = tmp_path / "offline"
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(out), "--push-to-hub", "org/x"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SleepifyError) and "HF_HUB_OFFLINE" in str(result.exception)
    assert (out / "config.json").is_file() and AutoModelForCausalLM.from_pretrained(out) is not None


# ------------------------------------------------------------------------------------------------ the card

CACHED = "/hf/hub/models--Qwen--Qwen2.5-0.5B/snapshots/0123abcd"


def convert_stage(source: str, revision: str | None = None) -> list[dict]:
    return [{"stage": "convert", "recipe": {"model": {"source": source, "revision": revision}}}]


@pytest.mark.parametrize(
    ("source", "name_or_path", "hub_id"),
    [
        ("Qwen/Qwen2.5-0.5B", CACHED, "Qwen/Qwen2.5-0.5B"),  # a Hub id, read from the Hub cache
        ("qwen2.5-0.5b", CACHED, "Qwen/Qwen2.5-0.5B"),  # an alias
        ("Qwen/Qwen2.5-0.5B", "", "Qwen/Qwen2.5-0.5B"),  # no base path recorded: the shape decides
        ("", CACHED, "Qwen/Qwen2.5-0.5B"),  # runs that recorded no source: the Hub cache path
        ("rel/base", "rel/base", None),  # a relative local folder shaped like a Hub id
        ("", "rel/base", None),  # the same in a run that recorded no source
        ("/abs/base", "/abs/base", None),
        ("../base", "../base", None),
        ("~/models/base", "", None),
        ("C:\\models\\base", "", None),
        ("builtin:gdn-hybrid-4", "", None),
    ],
)
def test_base_model_is_a_hub_id_or_nothing(source: str, name_or_path: str, hub_id: str | None) -> None:
    from types import SimpleNamespace

    from sleepify.stages.export import _base_model

    config = SimpleNamespace(base_config={"_name_or_path": name_or_path} if name_or_path else {})
    info = _base_model(convert_stage(source, "main"), Path("/nonexistent-model"), config)
    assert info["hub_id"] == hub_id, info
    if hub_id is None:
        assert info["revision"] is None and info["name"]
        assert (info["builtin"] or info["folder"]) in (source or name_or_path, source)
    else:
        assert info["revision"] == "main" and info["folder"] is None


def test_existing_local_folder_is_never_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sleepify.stages.export import hub_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert hub_repo_id("org/model") is None and hub_repo_id("org/other") == "org/other"
    assert hub_repo_id("a/b/c") is None and hub_repo_id("a--b/c") is None and hub_repo_id("") is None


def test_card_tags_reflect_the_content() -> None:
    from types import SimpleNamespace

    from sleepify.stages.export import card_tags

    def cfg(model_type: str, *mixers: str, jet: int = 0) -> SimpleNamespace:
        plan = [{"type": "base", "index": i, "mixer": m} for i, m in enumerate(mixers)]
        plan += [{"type": "jet", "index": j, "mixer": "jet"} for j in range(jet)]
        return SimpleNamespace(base_model_type=model_type, block_plan=plan)

    base = ["sleepify", "custom_code", "sleep-hybrid"]
    ssm = ["ssm-attention-hybrid", "gated-delta-rule"]
    assert card_tags(cfg("ouro", "full_attention", "full_attention")) == [*base, "ouro"]
    assert card_tags(cfg("qwen2", "full_attention", jet=1)) == [*base, "qwen2", *ssm, "jet-block"]
    assert card_tags(cfg("jet_nemotron", "jet", "full_attention")) == [
        *base,
        "jet_nemotron",
        *ssm,
        "jet-block",
    ]
    assert card_tags(cfg("sleep_scratch", "full_attention", "gdn")) == [*base, "sleep_scratch", *ssm]


def test_card_datasets_are_hub_ids_only(tmp_path: Path) -> None:
    from sleepify.stages.export import _datasets

    (tmp_path / "mine").mkdir()
    stages = [
        {"stage": stage, "recipe": {"data": {"path": path}}}
        for stage, path in [
            ("warmup", "HuggingFaceFW/fineweb-edu"),
            ("train", str(tmp_path / "mine")),
            ("train", "data/train.jsonl"),  # a local file that is gone: not a Hub id
            ("train", "../gone"),
        ]
    ]
    hub, local = _datasets(stages)
    assert hub == ["HuggingFaceFW/fineweb-edu"]
    assert local == [
        "train: `mine` (local)",
        "train: `data/train.jsonl` (local, not found at export time)",
        "train: `../gone` (local, not found at export time)",
    ]


def test_card_of_a_hub_source(run: Path, tmp_path: Path) -> None:
    """A model converted from a Hub id: base_model, the license of the Hub snapshot, the Hub link."""
    lone = tmp_path / "lone"
    shutil.copytree(run / "convert", lone)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: other\nlicense_name: qwen-research\n---\n")
    recipe = (lone / "recipe.yaml").read_text()
    recipe = re.sub(r"(?m)^  source: .*$", "  source: Qwen/Qwen2.5-0.5B", recipe)
    (lone / "recipe.yaml").write_text(recipe)
    config = json.loads((lone / "config.json").read_text())
    config["base_config"]["_name_or_path"] = str(snapshot)
    (lone / "config.json").write_text(json.dumps(config))
    export(lone, tmp_path / "out", log=None)
    meta = hub_metadata(tmp_path / "out" / "README.md")
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B"
    assert (meta["license"], meta["license_name"]) == ("other", "qwen-research")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Converted from: the Hub model `Qwen/Qwen2.5-0.5B`." in card
    assert "[`Qwen/Qwen2.5-0.5B`](https://huggingface.co/Qwen/Qwen2.5-0.5B)" in card


def test_card_usage_snippet_runs_as_written(run: Path, tmp_path: Path, minimal_site: Path) -> None:  # noqa: F811
    """The card's Python block, run unchanged where only torch and transformers are importable."""
    import os
    import subprocess
    import sys

    out = tmp_path / "exported"
    export(run, out, log=None)
    card = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f'model_id = "{out}"' in snippet and "trust_remote_code=True" in snippet
    assert "pip install torch transformers safetensors" in card and "pip install ." in card
    (tmp_path / "snippet.py").write_text(snippet)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "PYTHONPATH": str(minimal_site)}
    proc = subprocess.run(
        [sys.executable, "-S", str(tmp_path / "snippet.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() or proc.stdout == "\n"  # it printed the continuation


def test_export_keeps_the_model_dtype(run: Path, tmp_path: Path) -> None:
    """A bfloat16 model exports bfloat16 unless export.dtype says otherwise (it was float32 always)."""
    bf16 = tmp_path / "bf16-model"
    export(run / "warmup", bf16, dtype="bf16", log=None)
    shutil.copy2(run / "warmup" / "model" / "recipe.yaml", bf16 / "recipe.yaml")
    out = tmp_path / "again"
    export(bf16, out, log=None)  # no dtype given, the stored recipe's export.dtype is null: the model's own
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert size == sum(p.stat().st_size for p in bf16.glob("*.safetensors"))  # not widened to float32
    ref = AutoModelForCausalLM.from_pretrained(bf16)
    for (n, p), (_, q) in zip(ref.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    fp32 = tmp_path / "fp32"
    export(bf16, fp32, dtype="fp32", log=None)
    assert next(AutoModelForCausalLM.from_pretrained(fp32).parameters()).dtype == torch.float32
