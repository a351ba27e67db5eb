"""The command line starts without torch (fast --help), registers the model types when transformers is
imported, and applies its CPU threading policy (sleepify/threads.py) before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleepify.threads import DEFAULT_WAIT_POLICY, apply_thread_policy

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    base["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**base, **(env or {})}, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_help_imports_no_torch() -> None:
    # every command's help (the CLI reference walks them all) without torch, transformers, datasets or
    # pydantic (the recipe schema loads when a recipe is read)
    out = _python(
        "import sys, json\n"
        "from sleepify.cli.reference import cli_reference\n"
        "cli_reference()\n"
        "heavy = ('torch', 'transformers', 'datasets', 'pydantic')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    assert json.loads(out) == []


def test_listed_summaries_match_the_commands_help() -> None:
    import click

    from sleepify.cli.main import COMMANDS, SUMMARIES, cli

    assert set(SUMMARIES) == set(COMMANDS)
    ctx = click.Context(cli, info_name="sleepify")
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        for limit in (45, 80, 300):
            listed = click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)
            assert listed == command.get_short_help_str(limit), name


def test_model_types_register_once_transformers_is_imported() -> None:
    out = _python(
        "import sys, json\n"
        "import sleepify\n"
        "before = 'torch' in sys.modules\n"
        "from transformers import AutoConfig\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "types = ('ouro', 'jet_nemotron', 'sleep_hybrid')\n"
        "print(json.dumps([before, [t in CONFIG_MAPPING for t in types]]))\n"
    )
    assert json.loads(out) == [False, [True, True, True]]


def test_policy_precedence() -> None:
    env: dict[str, str] = {}
    apply_thread_policy(environ=env)
    assert env == {"OMP_WAIT_POLICY": DEFAULT_WAIT_POLICY}
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "2"}  # the user's environment wins
    apply_thread_policy(environ=env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "2"}
    apply_thread_policy(threads=3, environ=env)  # --threads wins over the environment
    assert env["OMP_NUM_THREADS"] == "3"
    with pytest.raises(ValueError):
        apply_thread_policy(threads=0, environ={})


@pytest.mark.parametrize(
    ("args", "env", "threads", "policy"),
    [
        (["--threads", "1"], {}, 1, DEFAULT_WAIT_POLICY),
        ([], {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}, 1, "ACTIVE"),
    ],
)
def test_policy_reaches_torch(args: list[str], env: dict[str, str], threads: int, policy: str) -> None:
    # doctor reports the torch thread count and the wait policy torch was loaded with
    code = (
        "import sys; from sleepify.cli.main import main\n"
        f"main({[*args, 'doctor', '--json', '--no-check', '--device', 'cpu']!r})\n"
    )
    report = json.loads(_python(code, env))
    assert report["devices"]["torch_threads"] == threads
    assert report["devices"]["omp_wait_policy"] == policy
