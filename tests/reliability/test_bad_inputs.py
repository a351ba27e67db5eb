"""Every bad input ends in one line on stderr, exit code 2, no traceback, and the workspace byte-identical
afterwards (nothing deleted, nothing half-written, no temporaries left)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.reliability.conftest import MODEL, run_cli, tree_digest

T = ["--data", "data/rule110", "--steps", "1"]
CASES: dict[str, list[str]] = {
    # damaged model folders, for every command that loads one
    **{
        f"{cmd}-{bad}": {
            "train": ["train", f"bad/{bad}", *T, "--out", f"out-{bad}"],
            "export": ["export", f"bad/{bad}", "--out", f"out-{bad}"],
            "generate": ["generate", f"bad/{bad}", "--prompt", "0110", "--max-new-tokens", "1"],
            "eval": ["eval", f"bad/{bad}", "--data", "data/rule110", "--N", "1"],
        }[cmd]
        for cmd in ("train", "export", "generate", "eval")
        for bad in ("truncated", "random", "empty-weights", "mismatch", "pickle", "no-weights")
    },
    "train-bad-json": ["train", "bad/bad-json", *T],
    "train-not-sleep": ["train", "bad/not-sleep", *T],
    "train-plain-folder": ["train", "plain", *T],
    "train-missing-model": ["train", "nope", *T],
    # data
    "train-missing-data": ["train", "runs/tiny/convert", "--data", "/nonexistent", "--out", "o"],
    "train-empty-jsonl": ["train", "runs/tiny/convert", "--data", "empty.jsonl", "--out", "o"],
    "train-wrong-columns": ["train", "runs/tiny/convert", "--data", "wrong-columns.jsonl", "--out", "o"],
    "train-zero-rows": ["train", "runs/tiny/convert", "--data", "data/empty", "--steps", "1", "--out", "o"],
    "data-existing-out": ["data", "rule110", "--out", "data/rule110", "--n-train", "4", "--n-test", "1"],
    # --overwrite that would destroy its input, or a finished run
    "warmup-overwrite-own-input": ["warmup", "--N", "1", "--steps", "1", "--overwrite"],
    "train-overwrite-finished-bad-data": [
        "train",
        "runs/tiny/convert",
        "--data",
        "/nonexistent",
        "--out",
        "runs/tiny/warmup",
        "--overwrite",
    ],
    "convert-overwrite-bad-loop": [
        "convert",
        MODEL,
        "--out",
        "runs/tiny/convert",
        "--overwrite",
        "conversion.loop={start: 0, end: 99}",
    ],
    "convert-existing-out": ["convert", MODEL, "--out", "runs/tiny/convert"],
    "convert-out-is-file": ["convert", MODEL, "--out", "a-file"],
    "convert-into-own-source": ["convert", "runs/tiny/convert", "--out", "runs/tiny", "--overwrite"],
    "export-onto-itself": ["export", "runs/tiny/warmup", "--out", "runs/tiny/warmup", "--overwrite"],
    "export-existing-out": ["export", "runs/tiny/warmup", "--out", "exported"],
    # run folders
    "train-occupied": ["train", "runs/tiny/convert", *T, "--out", "runs/tiny/warmup"],
    "train-resume-nothing": ["train", "runs/tiny/convert", *T, "--out", "runs/tiny/convert-x", "--resume"],
    "warmup-resume-other-trainable": [
        "warmup",
        "runs/tiny/convert",
        *T,
        "--out",
        "runs/tiny/warmup",
        "--resume",
        'train.trainable=["*"]',
        "train.batch_size=3",
    ],
    # Hub ids and sources
    "convert-hub-dotdot": ["convert", "evil/..", "--out", "o"],
    "convert-hub-dotdot-name": ["convert", "evil/../x", "--out", "o"],
    "convert-bad-json": ["convert", "bad/bad-json", "--out", "o"],
    "convert-no-config": ["convert", "plain", "--out", "o"],
    "convert-pickle-only": ["convert", "bad/pickle", "--out", "o"],
    # flags and overrides
    "train-negative-steps": ["train", "runs/tiny/convert", "--data", "data/rule110", "--steps", "-1"],
    "train-bad-batch": ["train", "runs/tiny/convert", *T, "train.batch_size=abc"],
    "train-unknown-key": ["train", "runs/tiny/convert", *T, "train.stpes=3"],
    "train-zero-passes": ["train", "runs/tiny/convert", *T, "--N", "0"],
    "train-unknown-recipe": ["train", "runs/tiny/convert", *T, "-r", "no-such-recipe"],
    "recipes-show-unknown": ["recipes", "show", "no-such-recipe"],
    # prompts
    "generate-latin1-file": ["generate", "exported", "--prompt-file", "latin1.txt"],
    "generate-surrogate-prompt": ["generate", "exported", "--prompt", "caf\udce9"],
    "generate-missing-folder": ["generate", "nope", "--prompt", "0"],
}


@pytest.mark.parametrize("argv", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line(argv: list[str], in_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_digest(in_workspace)
    code, _, err = run_cli(["-q", *argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, err
    assert tree_digest(in_workspace) == before


def test_live_lock_refuses(in_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    lock = in_workspace / "runs/tiny/.warmup.lock"
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))  # init: alive
    try:
        before = tree_digest(in_workspace)
        code, _, err = run_cli(["-q", "warmup", "runs/tiny/convert", *T, "--out", "runs/tiny/warmup",
                                "--resume"], capsys)  # fmt: skip
        assert code == 2 and "in use by process 1" in err and "Traceback" not in err
        assert tree_digest(in_workspace) == before
    finally:
        lock.unlink()
