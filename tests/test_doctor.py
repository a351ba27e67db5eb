"""``sleepify doctor`` and the backend registry it shares with the ops."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from click.testing import CliRunner

from sleepify.cli.main import cli
from sleepify.doctor import CASES, run_doctor
from sleepify.ops import registry
from sleepify.ops.registry import OPS, Call, explain, resolve

# the modules (``sleepify.ops`` re-exports functions of the same names)
gdr_module = importlib.import_module("sleepify.ops.gated_delta_rule")
attention_module = importlib.import_module("sleepify.ops.attention")


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests/conftest.py turns the Triton interpreter on, which makes the CUDA-only kernels "available" on
    # CPU (slowly); doctor on a CPU machine without it is what a user sees
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU report")
def test_doctor_passes_here_and_checks_every_auto_path() -> None:
    report = run_doctor(device="cpu")
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    # every op and situation has its auto backend checked, and that is what the op resolves to
    for case in CASES:
        used = [c for c in report["checks"] if c["op"] == case.op and c["case"] == case.label and c["used"]]
        assert len(used) == 1, (case.op, case.label)
        call = Call("cpu", torch.float32, case.grad, case.tokens)
        assert used[0]["backend"] == resolve(case.op, "auto", call)
    # the CUDA-only backends are listed as unavailable with the reason, not checked
    checked = {(c["op"], c["backend"]) for c in report["checks"]}
    assert ("gated_delta_rule", "fla_chunk") not in checked
    entry = next(e for e in report["ops"] if e["op"] == "gated_delta_rule")
    assert "needs CUDA tensors" in entry["unavailable"]["fla_chunk"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="breaks the CPU auto path")
def test_doctor_exits_nonzero_when_a_used_path_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    real = gdr_module.chunk_gated_delta_rule

    def off_by_a_bit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        o, state = real(*args, **kwargs)
        return o * 1.01, state

    monkeypatch.setattr(gdr_module, "chunk_gated_delta_rule", off_by_a_bit)
    result = CliRunner().invoke(cli, ["doctor", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="breaks a CPU path")
def test_a_broken_path_that_auto_does_not_use_is_reported_but_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = attention_module.window_attention_torch
    monkeypatch.setattr(attention_module, "window_attention_torch", lambda *a, **k: real(*a, **k) + 1)
    report = run_doctor(device="cpu")
    bad = [c for c in report["checks"] if not c["ok"]]
    assert bad and all(c["op"] == "window_attention" and c["backend"] == "torch" for c in bad)
    assert report["ok"]


def test_json_report() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--json", "--no-check", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["devices"]["torch"] == torch.__version__ and report["versions"]["torch"]
    assert {e["op"] for e in report["ops"]} == {c.op for c in CASES}
    assert report["checks"] == [] and report["ok"]


def test_auto_rules_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choices docs/gpu.md promises, without a GPU: the rules only look at the call's description."""
    present = {"fla.ops.gated_delta_rule", "fla.modules.norm.fused_norm_gate", "triton", "flash_attn"}
    monkeypatch.setattr(registry, "module_available", lambda name: name in present)
    bf16, f32 = torch.bfloat16, torch.float32
    assert explain("gated_delta_rule", Call("cuda", bf16, grad=True, tokens=1))[0] == "fla_chunk"
    assert explain("gated_delta_rule", Call("cuda", bf16, grad=False, tokens=65))[0] == "fla_chunk"
    assert explain("gated_delta_rule", Call("cuda", bf16, grad=False, tokens=64))[0] == "fla_recurrent"
    assert explain("gated_delta_rule", Call("cuda", torch.float64, grad=True, tokens=8))[0] == "chunk"
    assert explain("dynamic_conv", Call("cuda", f32))[0] == "triton"
    assert explain("gated_rmsnorm", Call("cuda", bf16))[0] == "fla"
    assert explain("window_attention", Call("cuda", bf16, tokens=1))[0] == "flash"
    assert explain("window_attention", Call("cuda", f32, tokens=1))[0] == "sdpa"
    present.clear()  # a GPU image without fla, triton or flash-attn falls back to torch, and says why
    for op, expected in [("gated_delta_rule", "chunk"), ("dynamic_conv", "torch"), ("gated_rmsnorm", "torch"),
                         ("window_attention", "sdpa")]:  # fmt: skip
        name, why = explain(op, Call("cuda", bf16, grad=True, tokens=8))
        assert name == expected and "import" in why, (op, name, why)


def test_registry_lists_each_ops_backends() -> None:
    assert set(OPS["gated_delta_rule"].names) >= {"auto", "recurrent", "chunk", "fla_chunk", "fla_recurrent"}
    with pytest.raises(ValueError, match="window_attention: unknown backend 'flsh'.*did you mean 'flash'"):
        resolve("window_attention", "flsh", Call("cpu"))
    # an explicit CUDA-only backend on CPU names the CPU alternative
    with pytest.raises(ValueError, match="use backend='chunk' or 'auto' on CPU"):
        resolve("gated_delta_rule", "fla_chunk", Call("cpu"))
