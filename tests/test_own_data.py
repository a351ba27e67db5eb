"""A user's own tokenizer, model and data: text / prompt-answer / chat files, saved datasets and Hub ids,
through the CLI and through the Python API (``sleepify.convert`` ... ``sleepify.generate``)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

import sleepify
from sleepify.cli.main import main
from sleepify.config.schema import DataSection
from sleepify.data.common import DataError
from sleepify.data.sources import open_data
from sleepify.data.tokenizer import build_char_tokenizer
from tests.helpers import invoke, one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

JET = [
    "conversion.jet_layers=[0]",
    "conversion.jet.num_heads=2",
    "conversion.jet.head_dim=8",
    "conversion.jet.generator_reduction=4",
    "sleep.window=16",
]
TRAIN = ["--steps", "2", "train.batch_size=4", "train.tensorboard=false", "train.log_every=1"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's base model with its own tokenizer (with a chat template), converted; and their data."""
    root = tmp_path_factory.mktemp("own")
    tok = build_char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    invoke(["convert", str(root / "base"), "--out", str(root / "run" / "convert"), *JET])
    _jsonl(
        root / "notes.jsonl", [{"text": f"note {i}: the sum of {i} and {i} is {2 * i}."} for i in range(40)]
    )
    _jsonl(root / "qa.jsonl", [{"question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(40)])
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"double {i}"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(40)
    ]
    _jsonl(root / "chat.jsonl", chats)
    return root


def test_formats_are_detected_from_the_columns(own: Path) -> None:
    for name, fmt in (("notes.jsonl", "text"), ("qa.jsonl", "prompt-answer"), ("chat.jsonl", "chat")):
        opened = open_data(DataSection(path=str(own / name)))
        assert opened.format == fmt
        assert opened.splits["train"].num_rows == 38 and opened.splits["eval"].num_rows == 2  # 5% held out
        assert f"format {fmt}" in opened.describe()


def test_loss_masks_of_each_format(own: Path) -> None:
    tok = AutoTokenizer.from_pretrained(own / "run" / "convert")
    text = open_data(DataSection(path=str(own / "notes.jsonl"))).rows("train", tok, progress=False)[0]
    assert text["loss_mask"] == [0] + [1] * (len(text["input_ids"]) - 1)  # every token is a target
    assert text["input_ids"][-1] == tok.eos_token_id
    qa = open_data(DataSection(path=str(own / "qa.jsonl"))).rows("train", tok, progress=False)[0]
    answer = tok.decode([t for t, m in zip(qa["input_ids"], qa["loss_mask"], strict=True) if m])
    assert qa["text"].endswith(" " + answer) and answer.isdigit()
    chat = open_data(DataSection(path=str(own / "chat.jsonl"))).rows("train", tok, progress=False)[0]
    scored = tok.decode([t for t, m in zip(chat["input_ids"], chat["loss_mask"], strict=True) if m])
    assert (
        chat["text"].startswith("<user>double ") and scored.rstrip("\n").isdigit()
    )  # only the assistant turn
    assert chat["answer_lengths"] == [sum(chat["loss_mask"])]


def test_tokenized_rows_are_cached(own: Path) -> None:
    tok = AutoTokenizer.from_pretrained(own / "run" / "convert")
    first = open_data(DataSection(path=str(own / "qa.jsonl"))).rows("train", tok, progress=False)
    again = open_data(DataSection(path=str(own / "qa.jsonl"))).rows("train", tok, progress=False)
    assert first.cache_files and first.cache_files == again.cache_files  # the second map read the cache
    other = build_char_tokenizer()  # another tokenizer (no chat template) is another cache entry
    third = open_data(DataSection(path=str(own / "qa.jsonl"))).rows("train", other, progress=False)
    assert third.cache_files != first.cache_files


def test_explicit_format_and_fields(own: Path) -> None:
    opened = open_data(DataSection(path=str(own / "qa.jsonl"), format="text", text_field="question"))
    assert opened.format == "text" and opened.fields == {"text": "question"}
    with pytest.raises(DataError, match="did you mean 'question'"):
        open_data(DataSection(path=str(own / "qa.jsonl"), format="text", text_field="questoin"))


def _one_line(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_data_is_one_line_before_the_model_loads(
    own: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def no_model(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    bad = _jsonl(tmp_path / "bad.jsonl", [{"foo": 1, "bar": "x"}] * 4)
    out = tmp_path / "run"
    err = _one_line(["train", str(own / "run" / "convert"), "--data", str(bad), "--out", str(out)], capsys)
    assert "columns foo, bar" in err and "prompt+answer" in err and "messages" in err
    assert not out.exists()  # nothing written: a corrected rerun is not blocked
    err = _one_line(["train", str(own / "run" / "convert"), "--data", str(tmp_path / "nope.jsonl")], capsys)
    assert "does not exist" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _one_line(["train", str(own / "run" / "convert"), "--data", "someone/some-dataset"], capsys)
    assert "Hub is unreachable" in err and "local" in err


def test_train_and_eval_text_prompt_answer_and_chat(own: Path) -> None:
    conv = str(own / "run" / "convert")
    out = invoke(["train", conv, "--data", str(own / "notes.jsonl"), "--out", str(own / "text"), *TRAIN])
    assert "format text" in out and "38 train / 2 held-out rows" in out
    assert (own / "text" / "model" / "config.json").is_file()
    assert (own / "text" / "model" / "tokenizer.json").is_file()  # the model's tokenizer travels with it
    # without --data the stage says which data it reuses
    out = invoke(["train", str(own / "text"), "--out", str(own / "text2"), *TRAIN])
    assert "from the previous stage's recipe" in out and "notes.jsonl" in out
    out = invoke(["eval", str(own / "text"), "--no-plot"])
    report = json.loads((own / "text" / "eval" / "eval.json").read_text())
    overall = report["results"][0]["overall"]
    assert report["data"]["metric"] == "perplexity" and overall["count"] == 2
    assert overall["perplexity"] == pytest.approx(float(torch.tensor(overall["loss"]).exp()), rel=1e-6)
    assert "perplexity" in out
    out = invoke(["train", conv, "--data", str(own / "qa.jsonl"), "--out", str(own / "qa"), *TRAIN])
    assert "format prompt-answer" in out
    invoke(["eval", str(own / "qa"), "--no-plot", "--quiet"])
    report = json.loads((own / "qa" / "eval" / "eval.json").read_text())
    assert report["data"]["metric"] == "exact_match" and report["results"][0]["overall"]["count"] == 2
    out = invoke(["train", conv, "--data", str(own / "chat.jsonl"), "--out", str(own / "chat"), *TRAIN])
    assert "format chat" in out


def test_saved_dataset_dict_with_a_text_column(own: Path, tmp_path: Path) -> None:
    """What used to crash with KeyError 'input_ids' after loading the model."""
    rows = {"text": [f"line {i} of my corpus" for i in range(12)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "mine")
    conv = str(own / "run" / "convert")
    out = invoke(["train", conv, "--data", str(tmp_path / "mine"), "--out", str(tmp_path / "r"), *TRAIN])
    assert "saved dataset" in out and "format text" in out


def test_dry_run_writes_nothing(own: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    text = invoke(["warmup", str(own / "run" / "convert"), "--data", str(own / "qa.jsonl"), "--out", str(out),
                   "--N", "3", "--dry-run"])  # fmt: skip
    assert "warmup:" in text and "N=3" in text and "eviction=hard" in text and "format prompt-answer" in text
    assert "# resolved recipe" in text and "passes: 3" in text
    assert not out.exists()


@pytest.mark.slow
def test_the_pipeline_from_python(own: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = own / "base"
    preview = sleepify.plan("convert", str(base), overrides=JET)
    assert preview.dry_run and not Path("runs").exists()  # nothing written
    converted = sleepify.convert(str(base), overrides=JET)
    real = json.loads((converted / "config.json").read_text())
    assert preview.params_after > preview.params_before
    assert [e["type"] for e in real["block_plan"]] == [e["source"].split("[")[0] for e in preview.block_table]
    assert converted == Path("runs/base/convert") and (converted / "config.json").is_file()
    plan = sleepify.plan("warmup", data=own / "qa.jsonl", N=2, steps=2)
    assert plan.data.format == "prompt-answer" and not plan.run_dir.exists()
    warm = sleepify.warmup(
        data=own / "qa.jsonl", N=2, steps=2, overrides={"train.batch_size": 4}, progress=False
    )
    assert warm.resolve() == Path("runs/base/warmup/model").resolve()
    trained = sleepify.train(N=2, steps=2, overrides={"train.batch_size": 4}, progress=False)  # data reused
    assert trained.resolve() == Path("runs/base/train/model").resolve()
    report = sleepify.evaluate(N=[1, 2], plot=False, progress=False)
    assert [r["N"] for r in report["results"]] == [1, 2] and Path(report["out"], "eval.json").is_file()
    exported = sleepify.export("runs/base/train", "exported")
    assert (exported / "README.md").is_file()
    result = sleepify.generate(exported, ["3+3=", "4+4="], max_new_tokens=3, greedy=True)
    assert len(result.texts) == 2 and all(len(t) == 3 for t in result.tokens)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sleepify.errors.SleepifyError, match="HF_HUB_OFFLINE"):
        sleepify.push(exported, "me/tiny-sleeper")


def test_import_sleepify_keeps_the_api_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sleepify; assert 'sleepify.api' not in sys.modules; "
        "import sleepify.export as ex; assert callable(ex) and ex.resolve_run; "
        "assert callable(sleepify.convert) and sleepify.train.__module__ == 'sleepify.api'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_quiet_hides_info(own: Path, tmp_path: Path) -> None:
    args = ["train", str(own / "run" / "convert"), "--data", str(own / "notes.jsonl"), *TRAIN]
    loud = invoke([*args, "--out", str(tmp_path / "a")])
    assert "format text" in loud and "train done" in loud and "train: 100%" in loud  # the bar names the stage
    for quiet in (["-q", *args], [*args, "--quiet"]):
        out = invoke([*quiet, "--out", str(tmp_path / quiet[0].strip("-"))])
        assert "format text" not in out and "train done" not in out and "100%" not in out, out


def test_slow_on_cpu_notice_suggests_the_cpu_recipe(own: Path) -> None:
    """The GPU-scale defaults (batch 512, 100 steps) on a 10M-parameter model: a notice before training."""
    from types import SimpleNamespace

    from sleepify.stages.train import _slow_on_cpu_notice

    rows = datasets.Dataset.from_dict({"input_ids": [[1] * 103] * 8})
    big = SimpleNamespace(parameters=lambda: [torch.empty(10_000_000, device="meta")])
    plan = sleepify.plan(
        "train", own / "run" / "convert", data=own / "qa.jsonl", overrides={"train.batch_size": 512}
    )
    notice = _slow_on_cpu_notice(big, rows, plan)
    assert notice and "-r repro/rule110-cpu" in notice and "batch 512" in notice
    small = SimpleNamespace(parameters=lambda: [torch.empty(1_000, device="meta")])
    assert (
        _slow_on_cpu_notice(
            small, rows, sleepify.plan("train", own / "run" / "convert", data=own / "qa.jsonl")
        )
        is None
    )
