"""``sleepify eval``: exact match per bucket, chance for a constant model, hand-checked aggregation,
and the command end to end on a tiny converted Qwen2."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import sleepify  # noqa: F401
from sleepify.cli.main import main
from sleepify.data.tokenizer import char_vocab
from sleepify.evaluation import AnswerRecord, EvalError, aggregate, evaluate, load_eval_data
from tests.helpers import invoke

VOCAB = 100
JET = [
    "conversion.jet_layers=[0]",
    "conversion.jet.num_heads=2",
    "conversion.jet.head_dim=8",
    "conversion.jet.generator_reduction=4",
    "sleep.window=24",
]


# ------------------------------------------------------------------------------------------------ stub models


class LookupModel(torch.nn.Module):
    """Knows the answers: a table from the real tokens before an answer token to that token, built from
    the rows it is asked about. Elsewhere it guesses at random."""

    def __init__(self, rows) -> None:
        super().__init__()
        self.table: dict[tuple[int, ...], int] = {}
        for row in rows:
            real = [t for t, m in zip(row["input_ids"], row["attention_mask"], strict=True) if m]
            # position of each token among the real tokens
            real_pos = [c - 1 for c in itertools.accumulate(row["attention_mask"])]
            for s, n in zip(row["answer_starts"], row["answer_lengths"], strict=True):
                for i in range(s, s + n):
                    self.table[tuple(real[: real_pos[i]])] = real[real_pos[i]]
        self.lengths = {len(k) for k in self.table}

    def forward(self, input_ids, attention_mask, loss_mask=None, **_):
        b, t = input_ids.shape
        logits = torch.randn(b, t, VOCAB, generator=torch.Generator().manual_seed(1))
        for i in range(b):
            real = input_ids[i][attention_mask[i] == 1].tolist()
            pos = (attention_mask[i].cumsum(0) - 1).tolist()  # real tokens up to and including column p
            for p in range(t):
                if attention_mask[i, p] and pos[p] + 1 in self.lengths:
                    nxt = self.table.get(tuple(real[: pos[p] + 1]))
                    if nxt is not None:
                        logits[i, p, nxt] = 100.0
        return SimpleNamespace(logits=logits)


class ConstantModel(torch.nn.Module):
    """Always predicts the same token."""

    def __init__(self, token: int) -> None:
        super().__init__()
        self.token = token

    def forward(self, input_ids, attention_mask=None, loss_mask=None, **_):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[..., self.token] = 1.0
        return SimpleNamespace(logits=logits)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def rule110_t0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("r110") / "data"
    invoke(["data", "rule110", "--out", str(out), "--n-train", "4", "--n-test", "400", "--t", "0", "--quiet"])
    return out


@pytest.fixture(scope="module")
def depo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("depo") / "data"
    invoke(
        [
            "data", "depo", "--out", str(out), "--n-train", "4", "--n-test", "60", "--max-nodes", "8",
            "--n-queries", "4", "--max-k", "4", "--quiet",
        ]
    )  # fmt: skip
    return out


def rows_of(path: Path, split: str = "test") -> list[dict]:
    data, _ = load_eval_data(path, split)
    return [data[i] for i in range(len(data))]


# ------------------------------------------------------------------------------------- oracle / chance


def test_lookup_model_scores_100_percent(rule110_t0: Path, depo: Path) -> None:
    for path, mode in ((rule110_t0, "row"), (depo, "answer")):
        data, meta = load_eval_data(path)
        assert meta["exact_match"] == mode
        rows = rows_of(path)
        res = evaluate(LookupModel(rows), data, exact_match=mode, batch_size=7)
        assert res.overall.accuracy == 1.0 and res.overall.count == (len(rows) if mode == "row" else 4 * 60)
        assert all(b.accuracy == 1.0 for b in res.buckets.values())
        assert res.overall.loss < 1e-6  # logit 100 on the right token


def test_lookup_model_loses_what_it_does_not_know(depo: Path) -> None:
    """Forget the answers of half the rows: exactly those rows' answers are counted wrong (p = 0.01 per
    token of being right by chance, so the checked rows are wrong with near certainty but not surely)."""
    rows = rows_of(depo)
    known = LookupModel(rows[::2])
    res = evaluate(known, rows, exact_match="answer", batch_size=16)
    n_known = sum(len(r["answer_starts"]) for r in rows[::2])
    assert n_known <= res.overall.correct <= n_known + 5
    assert res.overall.count == sum(len(r["answer_starts"]) for r in rows)


def test_constant_model_scores_chance_on_rule110(rule110_t0: Path) -> None:
    data, _ = load_eval_data(rule110_t0)
    one = char_vocab()["1"]
    texts = data["text"]
    # t = 0: the answers are cell 0 of each random state, the last 4 characters of the text
    expected_rows = sum(t[-4:] == "1111" for t in texts) / len(texts)
    expected_bits = sum(t[-4:].count("1") for t in texts) / (4 * len(texts))
    res = evaluate(ConstantModel(one), data, exact_match="row", batch_size=64)
    assert res.overall.accuracy == pytest.approx(expected_rows)
    assert abs(res.overall.accuracy - 1 / 16) < 0.05  # chance for four fair bits
    per_answer = evaluate(ConstantModel(one), data, exact_match="answer", batch_size=64)
    assert per_answer.overall.accuracy == pytest.approx(expected_bits)
    assert abs(per_answer.overall.accuracy - 0.5) < 0.08
    # a constant "0" model gets the rows whose answers are all zero
    res0 = evaluate(ConstantModel(char_vocab()["0"]), data, exact_match="row", batch_size=64)
    assert res0.overall.accuracy == pytest.approx(sum(t[-4:] == "0000" for t in texts) / len(texts))


def test_constant_model_scores_chance_on_depo(depo: Path) -> None:
    rows = rows_of(depo)
    answers = []  # (k, answer tokens), read from the text after each query's ":"
    for r in rows:
        for s, n, k in zip(r["answer_starts"], r["answer_lengths"], r["bucket"], strict=True):
            answers.append((k, tuple(r["input_ids"][s : s + n])))
            assert r["input_ids"][s - 1] == char_vocab()[":"]
    single = Counter(a for _, a in answers if len(a) == 1)
    (token,), _ = single.most_common(1)[0]
    res = evaluate(ConstantModel(token), rows, exact_match="answer", batch_size=16)
    for k, stats in res.buckets.items():
        of_k = [a for kk, a in answers if kk == k]
        assert stats.count == len(of_k)
        assert stats.accuracy == pytest.approx(sum(a == (token,) for a in of_k) / len(of_k))
    # one node name among many: far below 1/2, and at most what a 1/min-nodes guesser would get
    assert 0 < res.overall.accuracy < 1 / 3


# ------------------------------------------------------------------------------------------------ aggregation


class PoisonModel(torch.nn.Module):
    """Predicts the next token (peeking), except that it never predicts token 7 (says 8 instead)."""

    def forward(self, input_ids, attention_mask=None, loss_mask=None, **_):
        nxt = torch.roll(input_ids, -1, dims=1)
        pred = torch.where(nxt == 7, torch.full_like(nxt, 8), nxt)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(pred, VOCAB).float() * 5.0)


def _row(ids, starts, lengths, buckets):
    mask = [0] * len(ids)
    for s, n in zip(starts, lengths, strict=True):
        mask[s : s + n] = [1] * n
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "loss_mask": mask,
        "answer_starts": starts,
        "answer_lengths": lengths,
        "bucket": buckets,
    }


def test_aggregation_by_bucket_on_a_hand_made_case() -> None:
    rows = [
        _row([5, 1, 2, 3, 4], [2, 4], [1, 1], [1, 2]),  # answers (2) and (4): both right
        _row([6, 7, 3, 9], [1], [2], [1]),  # answer (7, 3): wrong (7 is never predicted)
        _row([1, 2, 3, 4, 5, 6, 7], [5, 3], [2, 1], [2, 2]),  # (6, 7) wrong, (4) right
    ]
    # CE of a right token and of a wrong one under logits 5 * one_hot over 100 tokens
    right = -5 + math.log(math.exp(5) + 99)
    wrong = math.log(math.exp(5) + 99)
    results = [evaluate(PoisonModel(), rows, batch_size=bs) for bs in (1, 2, 3)]  # different left padding
    for res in results:
        assert set(res.buckets) == {1, 2}
        b1, b2 = res.buckets[1], res.buckets[2]
        assert (b1.correct, b1.count, b1.tokens) == (1, 2, 3)
        assert (b2.correct, b2.count, b2.tokens) == (2, 3, 4)
        assert b1.loss == pytest.approx((2 * right + wrong) / 3)
        assert b2.loss == pytest.approx((3 * right + wrong) / 4)
        assert (res.overall.correct, res.overall.count) == (3, 5)
        assert res.overall.loss == pytest.approx((5 * right + 2 * wrong) / 7)
        assert (res.rows, res.answers) == (3, 5)


def test_row_exact_match_needs_every_answer() -> None:
    recs = [
        AnswerRecord(row=0, bucket=4, correct=True, loss_sum=1.0, tokens=1),
        AnswerRecord(row=0, bucket=4, correct=False, loss_sum=3.0, tokens=1),
        AnswerRecord(row=1, bucket=4, correct=True, loss_sum=0.5, tokens=1),
        AnswerRecord(row=1, bucket=4, correct=True, loss_sum=0.5, tokens=1),
        AnswerRecord(row=2, bucket=0, correct=True, loss_sum=2.0, tokens=2),
    ]
    by_row = aggregate(recs, "row")
    assert (by_row.buckets[4].correct, by_row.buckets[4].count) == (1, 2)
    assert (by_row.buckets[0].correct, by_row.buckets[0].count) == (1, 1)
    assert by_row.buckets[4].loss == pytest.approx(5.0 / 4) and by_row.buckets[0].loss == pytest.approx(1.0)
    by_answer = aggregate(recs, "answer")
    assert (by_answer.buckets[4].correct, by_answer.buckets[4].count) == (3, 4)
    assert by_answer.to_dict()["buckets"]["4"]["accuracy"] == 0.75
    with pytest.raises(EvalError, match="one bucket per row"):
        aggregate([*recs, AnswerRecord(row=2, bucket=8, correct=True, loss_sum=0.0, tokens=1)], "row")


def test_nan_logits_at_an_answer_are_an_error() -> None:
    class Asleep(torch.nn.Module):
        def forward(self, input_ids, **_):
            return SimpleNamespace(logits=torch.full((*input_ids.shape, VOCAB), float("nan")))

    with pytest.raises(EvalError, match="no finite logits"):
        evaluate(Asleep(), [_row([5, 1, 2], [2], [1], [0])])


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalrun")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    Qwen2ForCausalLM(config).save_pretrained(root / "base")
    invoke(["convert", str(root / "base"), "--out", str(root / "run" / "convert"), *JET])
    invoke(
        [
            "data",
            "rule110",
            "--out",
            str(root / "data"),
            "--n-train",
            "8",
            "--n-test",
            "8",
            "--t",
            "0,4",
            "--quiet",
        ]
    )
    return root


def test_eval_command_end_to_end(tiny: Path) -> None:
    import datasets
    from transformers import AutoModelForCausalLM

    from sleepify.training.data import collate

    conv = tiny / "run" / "convert"
    out = invoke(
        ["eval", str(conv), "--data", str(tiny / "data"), "--N", "1,2", "--batch-size", "3", "--quiet"]
    )
    assert "| t | rows | N=1 acc | N=1 loss | N=2 acc | N=2 loss |" in out
    report = json.loads((conv / "eval" / "eval.json").read_text())
    test = datasets.load_from_disk(str(tiny / "data"))["test"]
    counts = Counter(b[0] for b in test["bucket"])
    assert report["data"]["exact_match"] == "row" and report["data"]["rows"] == len(test) == 8
    assert report["data"]["bucket"] == "t" and report["data"]["split"] == "test"
    assert [r["N"] for r in report["results"]] == [1, 2]
    assert [r["label"] for r in report["results"]] == ["N=1", "N=2"]
    for r in report["results"]:
        assert r["trained_N"] == 1 and r["L"] == 24 and r["eviction"] == "hard"
        assert {int(b): s["count"] for b, s in r["buckets"].items()} == dict(counts)
        assert {int(b): s["tokens"] for b, s in r["buckets"].items()} == {b: 4 * c for b, c in counts.items()}
        assert r["overall"]["count"] == 8 and 0 <= r["overall"]["accuracy"] <= 1
        assert sum(s["correct"] for s in r["buckets"].values()) == r["overall"]["correct"]
    # the overall loss is the model's own training loss over the split (one batch, engine CE)
    model = AutoModelForCausalLM.from_pretrained(conv)
    rows = [test[i] for i in range(len(test))]
    with torch.no_grad():
        engine_loss = model(**collate(rows, 0)).loss.item()
    assert report["results"][0]["overall"]["loss"] == pytest.approx(engine_loss, rel=1e-4)
    png = (conv / "eval" / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(conv / "eval" / "eval.png").shape[1] > 400  # two panels side by side
    assert "| overall | 8 |" in (conv / "eval" / "eval.md").read_text()


def test_eval_several_runs_and_latest(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conv = tiny / "run" / "convert"
    other = tiny / "other" / "convert"
    if not other.exists():
        shutil.copytree(conv, other, ignore=shutil.ignore_patterns("eval"))
    out = tiny / "compare"
    invoke(
        [
            "eval", str(conv), str(other), "--data", str(tiny / "data"), "--out", str(out),
            "--max-examples", "4", "--quiet", "--no-plot", "eval.batch_size=2",
        ]
    )  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    assert [r["label"] for r in report["results"]] == ["run/convert N=1", "other/convert N=1"]
    assert report["data"]["rows"] == 4 and report["data"]["batch_size"] == 2
    assert all(r["overall"]["count"] == 4 for r in report["results"])
    assert not (out / "eval.png").exists()
    # the same weights give the same numbers
    a, b = report["results"]
    assert a["buckets"] == b["buckets"]
    # no model argument: runs/latest
    monkeypatch.chdir(tiny)
    (tiny / "runs").mkdir(exist_ok=True)
    (tiny / "runs" / "latest").write_text(str(other.resolve()) + "\n")
    invoke(["eval", "--data", str(tiny / "data"), "--max-examples", "2", "--quiet", "--N", "3"])
    latest = json.loads((other / "eval" / "eval.json").read_text())
    assert latest["results"][0]["N"] == 3 and latest["results"][0]["trained_N"] == 1


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_clear_errors(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datasets

    conv = str(tiny / "run" / "convert")
    err = _one_line_error(["eval", conv, "--data", str(tmp_path / "nope")], capsys)
    assert "does not exist" in err and "sleepify data" in err
    bare = tmp_path / "bare"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]]})}).save_to_disk(bare)
    err = _one_line_error(["eval", conv, "--data", str(bare)], capsys)
    assert "loss_mask" in err and "answer_starts" in err
    err = _one_line_error(["eval", conv, "--data", str(tiny / "data"), "--split", "tset"], capsys)
    assert "did you mean 'test'" in err
    (tmp_path / "empty").mkdir()
    err = _one_line_error(["eval", str(tmp_path / "empty"), "--data", str(tiny / "data")], capsys)
    assert "not a model folder" in err
    err = _one_line_error(["eval", str(tiny / "base"), "--data", str(tiny / "data")], capsys)
    assert "'qwen2' model" in err and "sleepify convert" in err
    err = _one_line_error(["eval", conv, "--data", str(tiny / "data"), "--N", "0"], capsys)
    assert "--N" in err


def test_eval_keeps_only_the_logits_that_predict_answers(tiny: Path) -> None:
    """The converted model returns the logits of the trailing columns that predict answers only
    (``logits_to_keep``), and the verdicts and losses are those computed from the full logits."""
    import datasets
    from transformers import AutoModelForCausalLM

    from sleepify.evaluation import evaluate

    model = AutoModelForCausalLM.from_pretrained(tiny / "run" / "convert")
    test = datasets.load_from_disk(str(tiny / "data"))["test"]
    widths: list[int] = []  # columns of the logits each forward returned

    class FullLogits(torch.nn.Module):  # the same model, called without logits_to_keep
        def forward(self, **batch):  # noqa: ANN003, ANN202
            return model(**batch)

    model.register_forward_hook(lambda m, a, out: widths.append(out.logits.shape[1]))
    kept = evaluate(model, test, exact_match="row", batch_size=4)
    trimmed = list(widths)
    widths.clear()
    full = evaluate(FullLogits(), test, exact_match="row", batch_size=4)
    assert kept.buckets == full.buckets
    assert trimmed and all(k < 20 for k in trimmed)  # the answer bits (+1), not the whole row
    assert widths and all(k > 30 for k in widths)  # every column


def test_report_goes_into_a_shared_folder_and_an_eval_only_dataset(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out .`` holding a file of the user's and an old report: the user's file stays, the report is
    replaced (a stale eval.png removed under --no-plot), nothing is left beside the folder. The data is
    evaluation-only (``data --n-train 0``)."""
    only_test = tmp_path / "only-test"
    invoke(
        ["data", "rule110", "--out", str(only_test), "--n-train", "0", "--n-test", "5", "--t", "0", "--quiet"]
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine\n")
    (shared / "eval.png").write_bytes(b"old plot")
    (shared / "eval.json").write_text("{}")
    monkeypatch.chdir(shared)
    invoke(["eval", str(tiny / "run" / "convert"), "--data", str(only_test), "--out", ".", "--no-plot", "-q"])
    assert sorted(p.name for p in shared.iterdir()) == ["eval.json", "eval.md", "notes.txt"]
    assert (shared / "notes.txt").read_text() == "mine\n"
    report = json.loads((shared / "eval.json").read_text())
    assert report["data"]["rows"] == 5 and report["data"]["split"] == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only-test", "shared"]  # no temporary, no lock


def test_plot_draws_bars_for_one_bucket(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """One difficulty bucket (e.g. a sweep over N at one t): a bar per result in each panel, not lone dots;
    several buckets: a curve per result."""
    import matplotlib.axes

    from sleepify.evaluation.report import plot_report

    calls = {"bar": 0, "plot": 0}
    for name in calls:
        original = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(
            matplotlib.axes.Axes,
            name,
            lambda self, *a, _o=original, _n=name, **k: (
                calls.__setitem__(_n, calls[_n] + 1),
                _o(self, *a, **k),
            )[1],
        )
    data = {"bucket": "t", "split": "test", "rows": 8, "task": "rule110"}

    def result(label: str, buckets: list[str]) -> dict:
        return {"label": label, "buckets": {b: {"accuracy": 0.5, "loss": 1.0} for b in buckets}}

    one = {"data": data, "results": [result("N = 1", ["4"]), result("N = 4", ["4"])]}
    plot_report(one, tmp_path / "one.png")
    assert calls == {"bar": 4, "plot": 0}  # two results x two panels
    many = {"data": data, "results": [result("N = 1", ["2", "4"])]}
    plot_report(many, tmp_path / "many.png")
    assert calls == {"bar": 4, "plot": 2}
    assert (tmp_path / "one.png").stat().st_size > 0 and (tmp_path / "many.png").stat().st_size > 0
