"""Round three of bad inputs (issue 31): recipes that are bombs, binary or not UTF-8, infinite numbers,
usage errors, damaged checkpoints, pickle weights, wrongly typed or malformed data, models whose weights
are NaN, inputs inside --out. Each ends in one line naming the file or flag, exit 2, and the workspace
byte-identical; where the message matters, what it says is checked too."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import CLI, ENV, run_cli, tree_digest

T = ["--data", "data/rule110", "--steps", "1"]
RESUME = ["warmup", "runs/tiny/convert", "--data", "data/rule110", "--steps", "3", "--resume"]
CASES: dict[str, tuple[list[str], str]] = {  # name -> (argv, a part of the line)
    # recipes
    "train-alias-bomb": (
        ["train", "runs/tiny/convert", *T, "-r", "recipes/bomb.yaml"],
        "expand to more than",
    ),
    "validate-alias-bomb": (["recipes", "validate", "recipes/bomb.yaml"], "expand to more than"),
    "train-binary-recipe": (["train", "runs/tiny/convert", *T, "-r", "recipes/binary.yaml"], "binary file"),
    "validate-binary-recipe": (["recipes", "validate", "recipes/binary.yaml"], "binary file"),
    "validate-latin1-recipe": (["recipes", "validate", "recipes/latin1.yaml"], "is not UTF-8 text (byte 16)"),
    "train-inf-lr-recipe": (
        ["train", "runs/tiny/convert", *T, "-r", "recipes/inf-lr.yaml", "--out", "o"],
        "'train.optimizer.adamw_lr' expects a finite number, got inf",
    ),
    "train-inf-muon-lr": (
        ["train", "runs/tiny/convert", *T, "train.optimizer.muon_lr=.inf", "--out", "o"],
        "'train.optimizer.muon_lr' expects a finite number",
    ),
    "train-huge-window": (["train", "runs/tiny/convert", *T, "--L", "10" * 20], "less than or equal to"),
    "train-lr-key": (
        ["train", "runs/tiny/convert", *T, "train.lr=1e-3"],
        "unknown key 'train.lr' (did you mean 'train.optimizer.muon_lr' or 'train.optimizer.adamw_lr'?)",
    ),
    "train-huge-override": (
        ["train", "runs/tiny/convert", *T, "x" * 100_000],
        "must look like key.sub=value",
    ),
    # click usage errors
    "train-missing-value": (["train", "runs/tiny/convert", "--steps"], "requires an argument"),
    "train-unknown-option": (["train", "--bogus"], "No such option '--bogus'"),
    "generate-negative-temperature": (
        ["generate", "exported", "--prompt", "0", "--temperature", "-1"],
        "--temperature",
    ),
    "generate-nan-top-p": (["generate", "exported", "--prompt", "0", "--top-p", "nan"], "--top-p"),
    "no-such-command": (["trian"], "No such command"),
    # outputs that cannot be folders
    "train-out-is-file": (["train", "runs/tiny/convert", *T, "--out", "a-file"], "a-file"),
    "export-out-is-file": (["export", "runs/tiny/warmup", "--out", "a-file", "--overwrite"], "a-file"),
    "export-out-below-file": (["export", "runs/tiny/warmup", "--out", "a-file/x"], "a-file"),
    # damaged checkpoints on --resume
    **{
        f"resume-optimizer-{kind}": (
            [*RESUME, "--out", f"runs/opt-{kind}/warmup"],
            f"runs/opt-{kind}/warmup/checkpoints/step-0000002/optimizer.pt is damaged",
        )
        for kind in ("empty", "truncated", "pickle")
    },
    # one rule for weights: safetensors only
    **{
        f"{cmd}-pickle-weights": (argv, "reads safetensors only")
        for cmd, argv in {
            "train": ["train", "bad/pickle", *T, "--out", "o"],
            "eval": ["eval", "bad/pickle", "--data", "data/rule110"],
            "export": ["export", "bad/pickle", "--out", "o"],
            "generate": ["generate", "bad/pickle", "--prompt", "0"],
        }.items()
    },
    # export: a config that is wrong is not "damaged weights"
    "export-bad-json": (["export", "bad/bad-json", "--out", "o"], "config.json is not valid JSON"),
    "export-unknown-arch": (["export", "bad/unknown-arch", "--out", "o"], "not a sleep-capable model"),
    "export-not-sleep": (["export", "bad/not-sleep", "--out", "o"], "not a sleep-capable model"),
    # NaN weights: every stage that loads a model refuses them
    **{
        f"{cmd}-nan-weights": (argv, "are not finite")
        for cmd, argv in {
            "train": ["train", "bad/nan", *T, "--out", "o"],
            "eval": ["eval", "bad/nan", "--data", "data/rule110"],
            "export": ["export", "bad/nan", "--out", "o"],
            "generate": ["generate", "bad/nan", "--prompt", "0", "--max-new-tokens", "1"],
        }.items()
    },
    # data
    "train-int-text": (
        ["train", "runs/tiny/convert", "--data", "int-text.jsonl", "--out", "o"],
        "column 'text' (text) holds integer values",
    ),
    "train-bad-jsonl-line": (
        ["train", "runs/tiny/convert", "--data", "bad-line.jsonl", "--out", "o"],
        "bad-line.jsonl: line 5 is not valid JSON",
    ),
    "eval-tokens-as-strings": (
        ["eval", "runs/tiny/warmup", "--data", "str-tokens.jsonl", "--out", "o"],
        "column 'input_ids' holds string values, expected lists of integers",
    ),
    "train-data-is-run": (
        ["train", "runs/tiny/convert", "--data", "runs/tiny/warmup", "--out", "o"],
        "is a sleepify run or model folder, not a dataset",
    ),
    # inputs inside --out --overwrite
    "train-data-is-out": (
        ["train", "runs/tiny/convert", "--data", "data/rule110", "--out", "data/rule110", "--overwrite"],
        "data/rule110 lies inside data/rule110",
    ),
    "train-data-inside-out": (
        ["train", "runs/tiny/convert", "--data", "data/rule110", "--out", "data", "--overwrite"],
        "lies inside data",
    ),
    "train-recipe-inside-out": (
        [
            "train",
            "runs/tiny/convert",
            *T,
            "-r",
            "recipes/inf-lr.yaml",
            "--out",
            "recipes",
            "--overwrite",
            "train.optimizer.adamw_lr=1e-4",
        ],
        "lies inside recipes",
    ),  # fmt: skip
    "eval-data-is-out": (
        ["eval", "runs/tiny/warmup", "--data", "data/rule110", "--out", "data/rule110"],
        "lies inside data/rule110",
    ),
    "export-model-inside-out": (
        ["export", "runs/tiny/warmup", "--out", "runs", "--overwrite"],
        "lies inside",
    ),
    # prompts
    "generate-empty-prompt": (["generate", "exported", "--prompt", ""], "--prompt 1 is empty"),
    "generate-empty-prompt-file": (["generate", "exported", "--prompt-file", "empty-prompt.txt"], "is empty"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name: str, in_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    argv, expected = CASES[name]
    before = tree_digest(in_workspace)
    code, _, err = run_cli(["-q", *argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 1000
    assert "damaged" not in lines[0] or "resume-optimizer" in name, lines[0]
    assert tree_digest(in_workspace) == before


def test_alias_bomb_is_refused_fast_with_bounded_memory(
    in_workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    """Nine levels of nine aliases (387 million strings once expanded) under a list-valued key: refused
    within seconds, and this process's peak memory grows by less than 100 MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.monotonic()
    code, _, err = run_cli(["recipes", "validate", "recipes/bomb.yaml"], capsys)
    assert code == 2 and "expand to more than" in err
    assert time.monotonic() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000


def test_quiet_hides_every_bar(workspace: Path, tmp_path: Path) -> None:
    """`-q` in a fresh process: no weight-loading bar (transformers), no shard-writing bar, nothing on stderr
    but generate's one summary line."""
    for argv, allowed in (
        (["export", str(workspace / "runs/tiny/warmup"), "--out", str(tmp_path / "e")], 0),
        (["generate", str(workspace / "exported"), "--prompt", "0110", "--max-new-tokens", "2"], 1),
    ):
        done = subprocess.run(
            [*CLI, *argv], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == allowed and "it/s" not in done.stderr and "%|" not in done.stderr, done.stderr
