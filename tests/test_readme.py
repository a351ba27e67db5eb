"""Every `sleepify ...` command the README shows exists and accepts its options (checked via --help),
and the CI script runs exactly the README's test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from sleepify.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
COMMANDS = [
    line.split("#")[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.strip().startswith("sleepify ")
]


def test_readme_shows_commands() -> None:
    assert len(COMMANDS) >= 5


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_exists_with_its_options(line: str) -> None:
    args = shlex.split(line)[1:]
    words = [a for a in args if not a.startswith("-") and "=" not in a]
    result = CliRunner().invoke(cli, [*words[:2], "--help"])
    if result.exit_code != 0 or "Usage:" not in result.output:  # second word was an argument, not a group
        result = CliRunner().invoke(cli, [words[0], "--help"])
    assert result.exit_code == 0, result.output
    for option in (a.split("=")[0] for a in args if a.startswith("--")):
        assert option in result.output, f"{line}: {option} is not an option"


def test_ci_runs_the_readme_test_command() -> None:
    block = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```\n<!-- /test-command -->", README, re.S)
    assert block and block.group(1).startswith("python -m pytest")
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_cli_reference_doc_is_current() -> None:
    from sleepify.cli.reference import cli_reference

    doc = ROOT / "docs" / "cli.md"
    assert doc.read_text() == cli_reference(), "run: python -m sleepify.cli.reference > docs/cli.md"


# The README's CPU "Use" block runs as written, in order, in a fresh folder (offline, CPU-sized settings);
# the GPU-scale block needs a Hub download or a long run: the test above checks its options.
USE_CPU = [
    line.split("  #")[0].strip()
    for line in re.search(r"<!-- use-cpu -->\n```bash\n(.*?)```\n<!-- /use-cpu -->", README, re.S)
    .group(1)
    .splitlines()
    if line.strip()
]


@pytest.mark.slow
def test_readme_cpu_use_block_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert len(USE_CPU) >= 10 and all(line.startswith("sleepify ") for line in USE_CPU)
    for line in USE_CPU:
        result = CliRunner().invoke(cli, shlex.split(line)[1:], catch_exceptions=False)
        assert result.exit_code == 0, f"{line}\n{result.output}"
    assert (tmp_path / "data" / "rule110" / "meta.json").is_file()
    assert (tmp_path / "runs" / "gdn-hybrid-4-tiny" / "train" / "eval" / "eval.json").is_file()
    assert (tmp_path / "exported" / "README.md").is_file()
