"""Inference contracts of a causal LM, on the sleep-capable model: a row computes what it computes alone
(batch invariance: every row's windows count its own tokens), a stream fed in chunks through the returned
cache computes what one forward over the whole sequence computes, generate() is that same path, and the
cache can be cropped (assisted decoding) or refuses in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sleepify  # noqa: F401
from sleepify.data.tokenizer import build_char_tokenizer
from sleepify.errors import SleepifyError
from sleepify.generation import SleepCache, SleepStreams, generate
from sleepify.models.compat import output_cache
from tests.test_generation import L, build_tiny_run, load

LENGTHS = (5, 19, 3 * L + 2)  # rows ending in the first, third and fourth window
ATOL = 1e-5  # fp32: the same row computed in a batch of another size


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("stream"))


def ragged(side: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of LENGTHS tokens padded on the left, the right, or split around padding in the middle."""
    g = torch.Generator().manual_seed(seed)
    T = max(LENGTHS) + (3 if side == "middle" else 0)
    ids = torch.randint(4, 100, (len(LENGTHS), T), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        if side == "left":
            mask[i, T - n :] = 1
        elif side == "right":
            mask[i, :n] = 1
        else:  # a hole of T - n columns after the first two tokens
            mask[i, :2] = 1
            mask[i, T - n + 2 :] = 1
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("passes", [1, 2, 4])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_forward_row_equals_row_alone(tiny_run: Path, passes: int, eviction: str) -> None:
    model = load(tiny_run, passes, eviction)
    for side in ("left", "right", "middle"):
        ids, mask = ragged(side)
        with torch.no_grad():
            batch = model(ids, attention_mask=mask).logits
            assert torch.isfinite(batch).all()
            for i in range(len(LENGTHS)):
                real = mask[i].bool()
                alone = model(ids[i : i + 1, real]).logits[0]
                torch.testing.assert_close(batch[i, real], alone, atol=ATOL, rtol=0)
                if i == 0:  # batches of 2 and 4 rows (the row repeated) give it the same
                    for n in (2, 4):
                        rows = model(ids[:1].repeat(n, 1), attention_mask=mask[:1].repeat(n, 1)).logits
                        torch.testing.assert_close(rows[:, real], alone.expand(n, -1, -1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("passes", [1, 2, 4])
def test_generation_rows_equal_rows_alone(tiny_run: Path, passes: int) -> None:
    """Greedy and beam search (transformers' generate) and seeded sampling (sleepify's generate) give a
    left-padded row what it gets alone."""
    model = load(tiny_run, passes, "sliding" if passes == 2 else "hard")
    ids, mask = ragged("left")
    kw = dict(max_new_tokens=12, pad_token_id=0, eos_token_id=None)
    greedy = model.generate(ids, attention_mask=mask, do_sample=False, **kw)
    beams = model.generate(ids, attention_mask=mask, do_sample=False, num_beams=2, **kw)
    sampled = generate(model, ids, mask, max_new_tokens=12, do_sample=True, temperature=1.5, seed=3)
    T = ids.shape[1]
    for i, n in enumerate(LENGTHS):
        row = ids[i : i + 1, T - n :]
        assert model.generate(row, do_sample=False, **kw)[0, n:].tolist() == greedy[i, T:].tolist()
        assert (
            model.generate(row, do_sample=False, num_beams=2, **kw)[0, n:].tolist() == beams[i, T:].tolist()
        )
        alone = generate(model, row, max_new_tokens=12, do_sample=True, temperature=1.5, seed=3)
        assert alone.tokens[0] == sampled.tokens[i]


@pytest.mark.parametrize("passes", [1, 4])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_rows_of_one_phase_decode_as_one_batch(tiny_run: Path, passes: int, eviction: str) -> None:
    """Prompts whose lengths agree modulo L share one stream (the shorter start with whole windows of
    padding), and each row still gets what it gets alone."""
    model = load(tiny_run, passes, eviction)
    lengths = (3, L + 3, 3 * L + 3)
    T = max(lengths)
    ids = torch.randint(4, 100, (len(lengths), T), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    cache = SleepCache(model)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, past_key_values=cache).logits
        assert len(cache.streams.groups) == 1
        steps = ids[:, -4:]
        stepped = model(steps, past_key_values=cache).logits
        assert len(cache.streams.groups) == 1
        for i, n in enumerate(lengths):
            row = torch.cat([ids[i : i + 1, T - n :], steps[i : i + 1]], 1)
            alone = model(row).logits[0]
            torch.testing.assert_close(logits[i, T - n :], alone[:n], atol=ATOL, rtol=0)
            torch.testing.assert_close(stepped[i], alone[n:], atol=ATOL, rtol=0)


def test_pipeline_batch_size_two_equals_one(tiny_run: Path) -> None:
    from transformers import pipeline  # imported here: it imports the optional `kernels` package

    model = load(tiny_run, 2)
    tok = build_char_tokenizer()
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    prompts = ["hi", "a much longer prompt that spans windows", "mid-sized one"]
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    one = [pipe(p, **kw)[0]["generated_text"] for p in prompts]
    two = [r[0]["generated_text"] for r in pipe(prompts, batch_size=2, **kw)]
    assert one == two


@pytest.mark.parametrize("passes", [1, 2, 4])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_chunks_through_the_cache_equal_one_forward(tiny_run: Path, passes: int, eviction: str) -> None:
    """Every split point of a 3-window sequence (and uneven multi-chunk splits, with padding) gives the
    logits of one forward; the cache is returned by every call."""
    model = load(tiny_run, passes, eviction)
    g = torch.Generator().manual_seed(1)
    T = 3 * L
    ids = torch.randint(4, 100, (2, T), generator=g)
    with torch.no_grad():
        whole = model(ids).logits
        for s in range(1, T):
            first = model(ids[:, :s], use_cache=True)
            cache = output_cache(first)
            assert isinstance(cache, SleepCache) and first.sleep_state is cache
            rest = model(ids[:, s:], past_key_values=cache, use_cache=True)
            assert output_cache(rest) is cache and cache.get_seq_length() == T
            torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), whole, atol=ATOL, rtol=0)
        ragged_ids, mask = ragged("left")
        whole = model(ragged_ids, attention_mask=mask).logits
        cache, parts = None, []
        for a, b in ((0, 1), (1, 9), (9, 10), (10, 23), (23, ragged_ids.shape[1])):
            out = model(ragged_ids[:, a:b], attention_mask=mask[:, :b], past_key_values=cache, use_cache=True)
            cache = output_cache(out)
            parts.append(out.logits)
        real = mask.bool()
        torch.testing.assert_close(torch.cat(parts, 1)[real], whole[real], atol=ATOL, rtol=0)
    assert cache.streams.window_fill.tolist() == [n % L or L for n in LENGTHS]


def test_decode_loop_with_returned_caches_equals_generate(tiny_run: Path) -> None:
    model = load(tiny_run, 2, "sliding")
    ids, mask = ragged("left")
    kw = dict(max_new_tokens=15, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = model.generate(ids, attention_mask=mask, **kw)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        seq = ids
        for _ in range(15):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            out = model(nxt, past_key_values=output_cache(out), use_cache=True)
    assert torch.equal(seq, expected)


def test_sleep_state_is_an_alias_and_a_raw_state_is_refused(tiny_run: Path) -> None:
    model = load(tiny_run, 2)
    ids = torch.randint(4, 100, (1, 2 * L + 3))
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :11], use_cache=True)
        rest = model(ids[:, 11:], sleep_state=first.sleep_state)
        torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), whole, atol=ATOL, rtol=0)
        with pytest.raises(ValueError, match="sleep_state= takes the SleepCache"):
            model(ids, sleep_state=first.sleep_state.streams.groups[0][1].window.entry)
        with pytest.raises(ValueError, match="this cache runs with passes=2"):
            model(ids[:, :1], past_key_values=output_cache(first), sleep_passes=3)


def test_assisted_decoding_crops_the_cache(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompt-lookup decoding (drafts checked by the model, rejected ones cropped from the cache) gives the
    greedy tokens, across several sleeps."""
    model = load(tiny_run, 2)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6, 9, 5, 6, 7, 5, 6]])
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)  # transformers 5.6.2 needs an EOS id here
    greedy = model.generate(ids, **kw)
    undone = []
    crop = SleepStreams.crop
    monkeypatch.setattr(SleepStreams, "crop", lambda self, n: (undone.append(n), crop(self, n))[1])
    assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=5, **kw), greedy)
    assert sum(undone) > 0  # drafts were rejected and undone


def test_crop_rolls_back_into_slept_windows_or_refuses(tiny_run: Path) -> None:
    model = load(tiny_run, 2, "sliding")
    ids = torch.randint(4, 100, (2, 12 * L))
    with torch.no_grad():
        whole = model(ids).logits
        cache = output_cache(model(ids[:, : 5 * L + 3], use_cache=True))
        cache.crop(-(L + 5))  # back into the window slept before the open one
        assert cache.get_seq_length() == 4 * L - 2
        again = model(ids[:, 4 * L - 2 : 6 * L], past_key_values=cache).logits
        torch.testing.assert_close(again, whole[:, 4 * L - 2 : 6 * L], atol=ATOL, rtol=0)
        cache.crop(2 * L)  # transformers < 5.25: a positive value is the length to keep
        assert cache.get_seq_length() == 2 * L
        model(ids[:, 2 * L :], past_key_values=cache)
        with pytest.raises(SleepifyError, match="cannot undo"):
            cache.crop(-(12 * L - 1))


def test_unsupported_cache_implementation_is_refused(tiny_run: Path) -> None:
    model = load(tiny_run)
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported"):
        model.generate(torch.randint(4, 100, (1, 5)), max_new_tokens=2, cache_implementation="static")


def test_config_states_the_context_and_the_window_fits_it(tiny_run: Path) -> None:
    from transformers import Qwen2Config

    from sleepify.config import load_recipe
    from sleepify.planning import plan_conversion

    assert load(tiny_run).config.max_position_embeddings == 512  # the base's context, top level
    base = Qwen2Config(num_hidden_layers=4, max_position_embeddings=512)
    plan = plan_conversion(base, load_recipe().recipe)  # the schema's 2048 exceeds the base
    assert plan.window == 512 and plan.hybrid_config().sleep_window == 512
    assert plan.recipe_updates()["sleep"]["window"] == 512
    with pytest.warns(UserWarning, match="larger than the base model's context"):
        plan = plan_conversion(base, load_recipe(overrides=["sleep.window=1024"]).recipe)
    assert plan.window == 1024


def test_lm_eval_harness_batch_one_equals_four(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-evaluation-harness on the export (``--model hf``, trust_remote_code) with a local YAML + JSONL task
    (tests/lm_eval_task): generate_until gives the same generations at batch size 1 and 4, loglikelihood
    the same values within fp32 1e-5."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from sleepify.stages.export import export

    folder = tmp_path / "export"
    export(tiny_run, folder, log=None)
    monkeypatch.chdir(Path(__file__).parent / "lm_eval_task")  # the YAMLs name their JSONL relatively
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = TaskManager(include_path=str(Path.cwd()))
    samples = {}
    for batch_size in (1, 4):
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={folder},trust_remote_code=True,dtype=float32",
            tasks=["sleepify_tiny_mc", "sleepify_tiny_gen"],
            batch_size=batch_size,
            device="cpu",
            task_manager=tasks,
            log_samples=True,
        )
        samples[batch_size] = {task: [s["resps"] for s in rows] for task, rows in out["samples"].items()}
    assert samples[1]["sleepify_tiny_gen"] == samples[4]["sleepify_tiny_gen"]
    one = torch.tensor([[float(r[0][0]) for r in row] for row in samples[1]["sleepify_tiny_mc"]])
    four = torch.tensor([[float(r[0][0]) for r in row] for row in samples[4]["sleepify_tiny_mc"]])
    torch.testing.assert_close(one, four, atol=ATOL, rtol=0)


def test_sleepify_eval_tasks_table_across_n(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sleepify eval MODEL --tasks ... --N 1,2`` runs the harness per N and writes the table task x N."""
    pytest.importorskip("lm_eval")
    import json

    from click.testing import CliRunner

    from sleepify.cli.main import cli

    tasks = Path(__file__).parent / "lm_eval_task"
    monkeypatch.chdir(tasks)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "eval"
    args = ["eval", str(tiny_run), "--tasks", "sleepify_tiny_mc,sleepify_tiny_gen", "--N", "1,2"]
    args += ["--include-path", str(tasks), "--limit", "4", "--batch-size", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "| sleepify_tiny_mc | acc,none | " in result.output and "N = 2" in result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["N"] == [1, 2] and set(report["results"]) == {"sleepify_tiny_mc", "sleepify_tiny_gen"}
    assert all(set(by_n) == {"1", "2"} for by_n in report["results"].values())
    assert (out / "eval.md").read_text().count("\n") >= 4


def test_sleepify_eval_tasks_without_the_harness_is_one_line(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import sys

    from sleepify.cli.main import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tiny_run), "--tasks", "hellaswag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'sleepify[eval]'" in err
