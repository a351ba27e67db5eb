"""Entry point of the ``sleepify`` command.

Sub-commands live one per module in ``sleepify/cli/`` and are imported lazily, so ``sleepify --help``
stays fast and a command's heavy imports (torch, transformers) only happen when it runs. That also lets
the CPU threading policy (``sleepify/threads.py``) take effect: it must be set before torch is imported.
"""

from __future__ import annotations

import importlib
import sys

import click

from sleepify import __version__
from sleepify.errors import SleepifyError
from sleepify.threads import apply_thread_policy

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "recipes": "sleepify.cli.recipes_cmd:recipes",
    "data": "sleepify.cli.data_cmd:data",
    "convert": "sleepify.cli.convert_cmd:convert",
    "models": "sleepify.cli.models_cmd:models",
    "warmup": "sleepify.cli.train_cmd:warmup",
    "train": "sleepify.cli.train_cmd:train",
    "eval": "sleepify.cli.eval_cmd:eval_cmd",
    "export": "sleepify.cli.export_cmd:export",
    "generate": "sleepify.cli.generate_cmd:generate",
    "push": "sleepify.cli.push_cmd:push",
    "bench": "sleepify.cli.bench_cmd:bench",
    "quickstart": "sleepify.cli.quickstart_cmd:quickstart",
    "doctor": "sleepify.cli.doctor_cmd:doctor",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attr = COMMANDS[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name == module_name:  # command not built yet
                    return None
                raise
            return getattr(module, attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sleepify")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch (OMP_NUM_THREADS); default: one per core, passive OpenMP wait",
)
def cli(threads: int | None) -> None:
    """Turn pretrained language models into sleep-capable SSM-attention hybrids."""
    apply_thread_policy(threads)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a SleepifyError becomes one clear line on stderr and exit code 2."""
    apply_thread_policy()  # before any command imports torch (the user's environment wins)
    try:
        cli.main(args=argv, prog_name="sleepify", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except SleepifyError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
