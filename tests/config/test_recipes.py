"""Recipe schema, loader and CLI: shipped recipes validate, bad input gets one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sleepify.cli.main import cli, main
from sleepify.config import available_recipes, load_recipe, recipe_from_run
from sleepify.config.loader import recipes_dir
from sleepify.errors import RecipeError

SHIPPED = sorted(available_recipes().items())


def test_recipes_are_shipped() -> None:
    assert recipes_dir().is_dir()
    assert len(SHIPPED) >= 5


@pytest.mark.parametrize(("name", "path"), SHIPPED, ids=[n for n, _ in SHIPPED])
def test_every_shipped_recipe_validates(name: str, path: Path) -> None:
    resolved = load_recipe(name)
    assert resolved.recipe.description, f"{name} needs a description for `recipes list`"
    # every key written in the file survives resolution (no key silently dropped)
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("base", None)
    dumped = resolved.to_dict()

    def check(node: dict, out: dict, prefix: str) -> None:
        for key, value in node.items():
            assert key in out, f"{prefix}{key} lost"
            if isinstance(value, dict):
                check(value, out[key], f"{prefix}{key}.")

    check(raw, dumped, "")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_chain_stacking_and_overrides(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "description: a\nsleep: {window: 64, passes: 2}\ntrain: {steps: 5}\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nsleep: {passes: 3}\n")
    write(tmp_path, "c.yaml", "train: {seed: 7}\n")
    resolved = load_recipe(
        [tmp_path / "b.yaml", tmp_path / "c.yaml"], ["sleep.eviction=sliding", "train.steps=9"]
    )
    r = resolved.recipe
    assert (r.sleep.window, r.sleep.passes, r.sleep.eviction) == (64, 3, "sliding")
    assert (r.train.steps, r.train.seed, r.description) == (9, 7, "a")
    assert [Path(s).name for s in resolved.sources] == ["a.yaml", "b.yaml", "c.yaml"]


def test_scientific_notation_without_dot_is_a_float(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "train:\n  optimizer: {muon_lr: 2e-3}\n")
    assert load_recipe(path).recipe.train.optimizer.muon_lr == pytest.approx(2e-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sleep: {passs: 2}\n", "unknown key 'sleep.passs' (did you mean 'sleep.passes'?)"),
        ("trian: {steps: 2}\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("train: {optimizer: {muon_lrr: 0.1}}\n", "did you mean 'train.optimizer.muon_lr'?"),
        ("train: {steps: many}\n", "'train.steps' expects integer, got 'many' (str)"),
        ("sleep: {checkpoint_windows: 1}\n", "'sleep.checkpoint_windows' expects boolean, got 1 (int)"),
        ("sleep: {eviction: soft}\n", "'sleep.eviction' expects 'hard' or 'sliding', got 'soft'"),
        ("conversion: {loop: {start: 4, end: 2}}\n", "must be greater than start"),
        ("- a\n- b\n", "a recipe must be a mapping"),
        ("sleep: {window: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert expected in str(err.value)


def test_base_cycle_and_missing_recipe(tmp_path: Path) -> None:
    write(tmp_path, "x.yaml", "base: y.yaml\n")
    write(tmp_path, "y.yaml", "base: x.yaml\n")
    with pytest.raises(RecipeError, match="loops"):
        load_recipe(tmp_path / "x.yaml")
    with pytest.raises(RecipeError, match="did you mean 'models/ouro-1.4b'"):
        load_recipe("models/ouro-1.4c")


@pytest.mark.parametrize("override", ["sleep.passes", "=3", "sleep..passes=3"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe([], [override])


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(RecipeError, match="is a value, not a section"):
        load_recipe([], ["sleep.passes=2", "sleep.passes.x=1"])


def test_resolved_recipe_saved_with_provenance(tmp_path: Path) -> None:
    resolved = load_recipe("models/ouro-1.4b", ["sleep.passes=4"])
    resolved.save(tmp_path / "run", stage="convert")
    text = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "# provenance" in text and "sleep.passes=4" in text and "ouro-1.4b.yaml" in text
    stored = recipe_from_run(tmp_path / "run")
    assert stored["sleep"]["passes"] == 4
    # the stored recipe is itself a valid, complete recipe
    again = load_recipe(tmp_path / "run" / "recipe.yaml").recipe
    assert again == resolved.recipe


def test_cli_recipes_list_show_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["recipes", "list"])
    assert out.exit_code == 0 and "models/ouro-1.4b" in out.output
    out = runner.invoke(cli, ["recipes", "show", "models/jet-nemotron-4b", "-o", "sleep.passes=6"])
    assert out.exit_code == 0
    shown = yaml.safe_load(out.output)
    assert shown["conversion"]["loop"] == {"start": 9, "end": 27} and shown["sleep"]["passes"] == 6
    good = write(tmp_path, "good.yaml", "sleep: {passes: 2}\n")
    out = runner.invoke(cli, ["recipes", "validate", str(good), "repro/rule110-cpu-curriculum"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [f"{good}: ok", "repro/rule110-cpu-curriculum: ok"]  # files and names


def test_cli_invalid_recipe_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", "sleep: {windw: 3}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes", "validate", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: bad.yaml: unknown key 'sleep.windw' (did you mean 'sleep.window'?)"]
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes", "validate", "repro/rule110-cpu-curiculum"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no shipped recipe of that name" in err[0]
    assert "did you mean 'repro/rule110-cpu-curriculum'" in err[0]


def test_recipe_reference_doc_is_current() -> None:
    from sleepify.config.reference import schema_reference

    doc = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
    assert doc.read_text() == schema_reference(), "run: sleepify recipes reference --out docs/recipes.md"
    for key in ("sleep.window", "sleep.passes", "train.optimizer.muon_lr", "conversion.loop.start"):
        assert f"`{key}`" in doc.read_text()
