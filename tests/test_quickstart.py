"""A shortened `sleepify quickstart`: every stage runs and leaves its artefact."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import sleepify  # noqa: F401
from sleepify.cli.main import cli


@pytest.mark.slow
class _TransformersRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quickstart_quick(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    notices = _TransformersRecords()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(notices)
    if hasattr(logging.Logger, "warning_once"):  # transformers' once-only warnings: each may show again here
        logging.Logger.warning_once.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["quickstart", "--quick", "--out", str(out)], catch_exceptions=False)
    finally:
        hf_logger.removeHandler(notices)
    assert result.exit_code == 0, result.output
    # no deprecation notice from transformers: our calls use the current names (sleepify/models/compat.py)
    deprecated = [m for m in notices.messages + result.output.splitlines() if "deprecated" in m.lower()]
    assert not deprecated, deprecated
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"N=1", "N=2"}
    for key in ("converted", "warmup", "trained", "export"):
        assert (Path(summary[key]) / "config.json").is_file(), key
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = AutoModelForCausalLM.from_pretrained(summary["export"])
    trained = AutoModelForCausalLM.from_pretrained(summary["trained"])
    assert exported.config.sleep_passes == 2 and exported.config.sleep_window == 24
    for (name, a), (_, b) in zip(exported.state_dict().items(), trained.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert "quickstart finished" in result.output
    # a second run refuses to overwrite
    again = CliRunner().invoke(cli, ["quickstart", "--quick", "--out", str(out)])
    assert again.exit_code != 0
