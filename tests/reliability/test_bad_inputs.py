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
    "data-no-rows": ["data", "rule110", "--out", "data/none", "--n-train", "0", "--n-test", "0"],
    "data-negative-rows": ["data", "rule110", "--out", "data/none", "--n-train", "-3"],
    "eval-out-is-file": ["eval", "runs/tiny/convert", "--data", "data/rule110", "--out", "a-file"],
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
    assert errors[0].count("cannot load the model") <= 1, err  # said once, not wrapped twice
    assert tree_digest(in_workspace) == before


LOCKED = {  # a folder another live process writes: every stage that writes one refuses
    "warmup": (
        "runs/tiny/.warmup.lock",
        ["warmup", "runs/tiny/convert", *T, "--out", "runs/tiny/warmup", "--resume"],
    ),
    "export": ("runs/tiny/.exported.lock", ["export", "runs/tiny/warmup", "--out", "runs/tiny/exported"]),
    "data": ("data/.new.lock", ["data", "rule110", "--out", "data/new", "--n-train", "4", "--n-test", "1"]),
    "eval": (
        "runs/tiny/.ev.lock",
        ["eval", "runs/tiny/warmup", "--data", "data/rule110", "--out", "runs/tiny/ev"],
    ),
    "convert": ("runs/tiny/.c2.lock", ["convert", MODEL, "--out", "runs/tiny/c2"]),
}


@pytest.mark.parametrize("stage", list(LOCKED))
def test_live_lock_refuses(stage: str, in_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    lock_file, argv = LOCKED[stage]
    lock = in_workspace / lock_file
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))  # init: alive
    try:
        before = tree_digest(in_workspace)
        code, _, err = run_cli(["-q", *argv], capsys)
        assert code == 2 and "in use by process 1" in err and "Traceback" not in err, err
        assert tree_digest(in_workspace) == before
    finally:
        lock.unlink()
