"""Property-based checks of the CLI contract (strategies and profiles: tests/reliability/fuzz.py): for every
generated recipe, override, command line and data file, ``sleepify`` exits 0 with a valid output or 2 with
one line, never a traceback, and leaves the workspace byte-identical. The ci profile is derandomized and
bounded (the file runs in well under a minute); ``python -m tests.reliability.fuzz --examples 2000`` is the
long run."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given

from tests.reliability import fuzz
from tests.reliability.conftest import run_cli


class Snapshot:
    """Every path under a folder with its size and modification time: cheap enough to take around every
    example (a write changes the time), and short in Hypothesis' reports."""

    def __init__(self, root: Path):
        self.root = root
        self.files = self.take()

    def take(self) -> dict[str, tuple[int, int]]:
        out = {}
        for path in self.root.rglob("*"):
            st = path.lstat()
            out[str(path.relative_to(self.root))] = (st.st_size, st.st_mtime_ns) if path.is_file() else (0, 0)
        return out

    def changed(self) -> list[str]:
        now = self.take()
        return sorted(k for k in now.keys() | self.files.keys() if now.get(k) != self.files.get(k))

    def __repr__(self) -> str:
        return f"Snapshot({self.root})"


@pytest.fixture(scope="module")
def peak_memory() -> None:
    """The whole fuzz run (hundreds of examples, some of them alias bombs and 200 kB values) adds a bounded
    amount to the process's peak memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < fuzz.MAX_GROWTH_KB, f"peak memory grew by {grown} KiB"


def contract(argv: list[str], root: Path, capsys: pytest.CaptureFixture, digest: Snapshot) -> str:
    """Run ``sleepify -q ARGV`` in ``root`` and check the contract; returns stdout (for exit 0)."""
    code, out, err = run_cli(["-q", *argv], capsys)
    event(f"{argv[0]}: exit {code}")  # --hypothesis-show-statistics: how many examples got how far
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert len(lines[0]) <= 2100, argv
    assert not digest.changed(), (argv, digest.changed())
    return out if code == 0 else ""


@pytest.fixture(scope="module")
def digest(workspace: Path) -> Snapshot:
    return Snapshot(workspace)


@given(raw=fuzz.recipe_bytes)
@fuzz.budget(60)
def test_recipes(raw: bytes, in_workspace: Path, capsys, digest, peak_memory) -> None:  # noqa: ANN001
    """Any bytes as a recipe file: `recipes validate` says ok or one line; when ok, `recipes show` prints a
    recipe that validates again (its own output is a valid recipe)."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "r.yaml"
        recipe.write_bytes(raw)
        out = contract(["recipes", "validate", str(recipe)], in_workspace, capsys, digest)
        if out:
            assert out.strip().endswith(": ok")
            shown = contract(["recipes", "show", str(recipe)], in_workspace, capsys, digest)
            resolved = Path(tmp) / "resolved.yaml"
            resolved.write_text(shown)
            assert yaml.safe_load(shown)
            assert contract(["recipes", "validate", str(resolved)], in_workspace, capsys, digest)


@given(items=fuzz.st.lists(fuzz.overrides, min_size=1, max_size=4))
@fuzz.budget(60)
def test_overrides(items: list[str], in_workspace: Path, capsys, digest, peak_memory) -> None:  # noqa: ANN001
    """Override strings on `recipes show` (the whole resolution) and on a training dry run."""
    contract(["recipes", "show", "recipes/inf-lr.yaml", "train.optimizer.adamw_lr=1e-4", *items],
             in_workspace, capsys, digest)  # fmt: skip
    contract(["train", "runs/tiny/convert", "--data", "data/rule110", "--dry-run", *items], in_workspace,
             capsys, digest)  # fmt: skip


@given(argv=fuzz.command_lines())
@fuzz.budget(80)
def test_command_lines(argv: list[str], in_workspace: Path, capsys, digest, peak_memory) -> None:  # noqa: ANN001
    """Random options and values (paths of the workspace, huge and negative numbers, nan, binary text) for
    every command that can run cheaply: dry runs, recipes, and generation of two tokens."""
    contract(argv, in_workspace, capsys, digest)


@given(spec=fuzz.data_files)
@fuzz.budget(40)
def test_data_files(spec, in_workspace: Path, capsys, digest, peak_memory) -> None:  # noqa: ANN001
    """Random rows (types, encodings, empty and 200 kB values, trailing junk) as JSONL / CSV / Parquet:
    a training dry run opens them (format, splits); data that opens (and is small: scoring takes time in
    proportion to the tokens) is then tokenized and scored by `eval` (two rows), which writes its report
    outside the workspace."""
    table, kind, encoding, junk = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = fuzz.write_rows(Path(tmp), table, kind, encoding, junk)
        out = contract(["train", "runs/tiny/convert", "--data", str(path), "--dry-run"], in_workspace, capsys,
                       digest)  # fmt: skip
        if out and path.stat().st_size < 20_000:  # eval's time grows with the tokens: huge rows only open
            contract(["eval", "runs/tiny/warmup", "--data", str(path), "--max-examples", "2", "--no-plot",
                      "--out", str(Path(tmp) / "ev")], in_workspace, capsys, digest)  # fmt: skip
