"""``sleepify bench`` (sleepify/stages/bench.py): end to end on a tiny model, and the memory accounting.

No timing assertions: only that the run completes, the JSON has its fields with positive numbers, and the
memory the decoders hold is counted right (against sizes computed from the model config).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, DynamicCache

import sleepify  # noqa: F401
from sleepify.cli.main import cli
from sleepify.generation import SleepDecoder
from sleepify.models.compat import cache_kwargs
from sleepify.stages.bench import (
    BenchModelSpec,
    build_bench_model,
    cache_bytes,
    decoder_bytes,
    format_report,
    held_bytes,
    run_bench,
)

L = 16
TINY = BenchModelSpec(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    jet_layers=(0,),
    jet_heads=2,
    jet_head_dim=8,
    window=L,
    max_positions=8192,
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bench_model(tmp_path_factory.mktemp("bench"), TINY)


def _check_result(res: dict, contexts: list[int], steps: int, passes: list[int]) -> None:
    assert res["contexts"] == contexts and res["decode_steps"] == steps
    assert res["device"] == "cpu"
    assert res["model"]["window"] == L and res["model"]["jet_layers"] == 1
    assert res["model"]["parameters"] > res["model"]["base_parameters"] > 0
    for kind in ("sleepify", "base"):
        rows = res["decode"][kind]
        assert [r["context"] for r in rows] == contexts
        for r in rows:
            for key in ("median_s", "mean_s", "min_s", "max_s", "tokens_per_s", "prefill_s", "state_bytes"):
                assert r[key] > 0, (kind, key, r)
            assert r["min_s"] <= r["median_s"] <= r["max_s"]
            assert "rss_delta_bytes" in r
    # every context > L: the stream slept on every full window of the context and of the decoded tokens
    for r in res["decode"]["sleepify"]:
        assert r["sleeps"] == (r["context"] + steps - 1) // L
    assert [row["passes"] for row in res["sleep"]] == passes
    for row in res["sleep"]:
        assert row["sleep_s"] > 0 and row["window_forward_s"] > 0 and row["ratio"] > 0
        assert row["loop_passes_run"] == row["passes"]  # every block loops: N passes per consolidation
        assert row["work_model"] == pytest.approx(row["passes"])
    for key in (
        "sleepify_longest_over_shortest",
        "base_longest_over_shortest",
        "sleepify_over_base_at_reference",
        "sleepify_state_longest_over_shortest",
        "base_cache_longest_over_shortest",
    ):
        assert res["ratios"][key] > 0
    # memory: the same phase of the window at every context, so sleepify holds the same bytes; the base
    # model's cache holds context + steps tokens
    assert res["ratios"]["sleepify_state_longest_over_shortest"] == 1.0
    expected = (contexts[-1] + steps) / (contexts[0] + steps)
    assert res["ratios"]["base_cache_longest_over_shortest"] == pytest.approx(expected)


def test_cli_bench_quick_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(tiny_model_dir),
            "--quick",
            "--contexts",
            "48,112",
            "--json",
            str(out),
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    _check_result(res, [48, 112], 8, [1, 2, 4])
    assert res["model"]["path"] == str(tiny_model_dir)
    for heading in ("## Decode", "## Memory", "## One sleep", "## Ratios"):
        assert heading in result.output
    assert "sleepify / base latency at 48" in result.output  # 1024 not measured: the shortest context


def test_cli_bench_quick_default_contexts(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--quick on its own: contexts 256, 1024, 4096 (the reference context 1024 is among them)."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli, ["bench", str(tiny_model_dir), "--quick", "--N", "2", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    _check_result(res, [256, 1024, 4096], 8, [2])
    assert res["reference_context"] == 1024


def test_run_bench_builds_its_model() -> None:
    """Without a model folder the benchmark builds (and describes) its own converted model."""
    res = run_bench(None, contexts=[40], steps=3, passes=[1], repeats=1, device="cpu", spec=TINY)
    assert res["model"]["path"] is None and "Qwen2" in res["model"]["description"]
    assert res["decode"]["sleepify"][0]["median_s"] > 0 and res["sleep"][0]["ratio"] > 0
    assert "## Ratios" in format_report(res)


def test_cli_bench_rejects_bad_contexts(tiny_model_dir: Path) -> None:
    for bad in ("abc", "0,64", ","):
        result = CliRunner().invoke(cli, ["bench", str(tiny_model_dir), "--contexts", bad])
        assert result.exit_code != 0 and "--contexts" in result.output


def test_cli_bench_k_suffix(tiny_model_dir: Path, tmp_path: Path) -> None:
    """'k' means 1024 tokens."""
    out = tmp_path / "bench.json"
    args = [
        "bench",
        str(tiny_model_dir),
        "--contexts",
        "0.25k",
        "--steps",
        "2",
        "--N",
        "1",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0  # not an integer
    args[3] = "1k"
    result = CliRunner().invoke(cli, [*args, "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["contexts"] == [1024]


def test_held_bytes_counts_each_storage_once() -> None:
    a = torch.zeros(10, 4)  # 160 bytes
    b = torch.zeros(3, dtype=torch.int64)  # 24 bytes
    nested = {"x": (a, a[2:5], a.t()), "y": [b, {"z": b.view(1, 3)}], "n": None, "s": "text"}
    assert held_bytes(nested) == 160 + 24
    assert held_bytes(nested, a) == 184
    assert held_bytes(torch.empty(0)) == 0


def _mixer_bytes(spec: BenchModelSpec) -> int:
    """One JetBlock state: fast weights [B, H, K, V] float32 + the conv window [B, value_dim, W]."""
    head_v = 2 * spec.jet_head_dim  # expand_v = 2
    rec = spec.jet_heads * spec.jet_head_dim * head_v * 4
    conv = spec.jet_heads * head_v * 4 * 4  # conv_size W = 4, float32
    return rec + conv


def test_memory_sleepify_flat_base_grows(tiny_model_dir: Path) -> None:
    """At the same phase of the window, the sleep decoder holds the same bytes at a context of 2L + 3 and
    6L + 3 tokens (one window of K/V at most, plus the mixer states), computed from the config; the base
    model's DynamicCache holds every token's K/V."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    head_dim = TINY.hidden_size // TINY.num_heads
    kv_token = 2 * TINY.num_kv_heads * head_dim * 4  # K and V of one token in one attention layer
    fill = 3
    held, cached = {}, {}
    for context in (2 * L + fill, 6 * L + fill):
        ids = torch.randint(4, 100, (1, context))
        dec = SleepDecoder(model)
        with torch.no_grad():
            dec.feed(ids)
            cache = DynamicCache(config=model.base.config)
            model.base(ids, **cache_kwargs(cache), use_cache=True)
        assert dec.window.length == fill
        held[context] = decoder_bytes(dec)
        # the open window: each attention layer's K/V buffer, preallocated for the whole window (L keys, hard
        # eviction) and written in place, the Jet state twice (the one the window started from, for the
        # consolidation, and the current one), and small index tensors
        core = TINY.num_layers * L * kv_token + 2 * len(TINY.jet_layers) * _mixer_bytes(TINY)
        assert core <= held[context] <= core + 32 * fill + 64
        cached[context] = cache_bytes(cache)
        assert cached[context] == TINY.num_layers * context * kv_token
    small, large = sorted(held)
    assert held[small] == held[large]
    assert cached[large] / cached[small] == pytest.approx(large / small)


def test_bench_compiled_stream(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile adds an interleaved SleepDecoder(compile=True) stream and its table (torch.compile is
    replaced by the identity here: compiled decoding itself is tested in tests/test_generation.py)."""
    compiled: list[object] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or module)
    res = run_bench(tiny_model_dir, contexts=[L + 3], steps=3, passes=[1], repeats=1, compile=True)
    assert compiled and [r["context"] for r in res["decode"]["sleepify_compiled"]] == [L + 3]
    assert res["ratios"]["compiled_over_eager_at_reference"] > 0
    assert "compiled / eager" in format_report(res)


def test_bench_scale_toy_chain(tmp_path: Path) -> None:
    """benchmarks/bench_scale.py at toy widths: the whole CLI chain (convert, data, warmup, a killed and
    resumed train, eval, sharded export, generation without sleepify across a window boundary) and the
    planner against the measured peaks at three settings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_scale", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scale.json"
    argv = ["--toy", "--threads", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    # stopped at the export (the machine went away): the record keeps every finished stage, the workdir stays
    run_stage = bench.Chain.run

    def stop_at_export(self, stage, *args, **kwargs):
        if stage == "export (sharded)":
            raise KeyboardInterrupt
        return run_stage(self, stage, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.Chain, "run", stop_at_export)
        with pytest.raises(KeyboardInterrupt):
            bench.main(argv)
    before = json.loads(out.read_text())
    assert before["complete"] is False and [r["stage"] for r in before["stages"]][-1] == "eval"
    assert (tmp_path / "work" / "bench_scale.json").is_file()
    with pytest.raises(SystemExit, match="holds a chain run with"):  # other settings: refused, not mixed
        bench.main([*argv, "--steps", "3"])
    # run again: finished stages are not run again (their rows kept as they were), the rest completes
    results = bench.main(argv)
    assert results["stages"][: len(before["stages"])] == before["stages"] and results["complete"] is True
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    stages = {row["stage"]: row for row in results["stages"]}
    assert list(stages) == ["convert", "data", "warmup --N 4", "train --N 4 (killed)", "train --resume auto",
                            "train --N 2 (no ckpt)", "eval", "export (sharded)"]  # fmt: skip
    assert all(row["wall_s"] > 0 and row["peak_rss_bytes"] > 0 for row in stages.values())
    assert stages["convert"]["bytes_written"] > 0 and stages["export (sharded)"]["bytes_written"] > 0
    assert results["resume"] == {"killed": True, "final_model": True}
    assert results["export_shards"] > 1
    gen = results["generate_without_sleepify"]
    assert gen["crossed"] and gen["new_tokens"] == 16 and gen["dtype"] == "torch.bfloat16"
    assert [p["setting"] for p in results["planner"]] == [
        "warmup N=4 checkpointed", "train N=4 checkpointed", "train N=2 not checkpointed"]  # fmt: skip
    assert all(p["predicted_bytes"] > 0 and p["measured_bytes"] > 0 for p in results["planner"])
    assert not (tmp_path / "work").exists()  # removed without --keep
    report = bench.format_report(results)
    assert all(f"| {stage} |" in report for stage in stages) and "| train N=2 not checkpointed |" in report
    assert "load + generate 16 tokens without sleepify" in report


def test_bench_half_linear_runs_and_reports_every_path(tmp_path: Path) -> None:
    """benchmarks/bench_half_linear.py at a tiny shape: every path timed, ratios computed, JSON written."""
    import importlib.util

    file = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_half_linear.py"
    spec = importlib.util.spec_from_file_location("bench_half_linear", file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "half.json"
    res = bench.main(["--rows", "4", "--hidden", "16", "--out-features", "8", "--threads", "1",
                      "--repeats", "1", "--ns-side", "16", "--json", str(out)])  # fmt: skip
    for path in ("float32", "bfloat16 native", "bfloat16 weights, float32 products"):
        assert res[path]["forward_s"] > 0 and res[path]["backward_s"] > 0
    assert res["speedup_newton_schulz"] > 0
    assert res["speedup_backward"] > 0 and json.loads(out.read_text())["threads"] == 1
