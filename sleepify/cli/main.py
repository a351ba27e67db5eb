"""Entry point of the ``sleepify`` command.

Sub-commands live one per module in ``sleepify/cli/`` and are imported lazily, so ``sleepify --help``
stays fast and a command's heavy imports (torch, transformers) only happen when it runs.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import click

from sleepify import __version__
from sleepify.errors import SleepifyError

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
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages.")
def cli(quiet: bool, verbose: bool) -> None:
    """Turn pretrained language models into sleep-capable SSM-attention hybrids.

    Shell completion: eval "$(_SLEEPIFY_COMPLETE=bash_source sleepify)" in ~/.bashrc (zsh_source,
    fish_source for zsh and fish).
    """
    from sleepify.cli.output import configure_logging  # -q / -v: what the library's logging shows

    configure_logging(-1 if quiet else 1 if verbose else 0)


def _on_sigterm(signum: int, frame: object) -> None:
    from sleepify.errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a SleepifyError becomes one clear line on stderr and exit code 2 (a stopped run 130 on
    SIGINT, 143 on SIGTERM); a full disk is one line too."""
    import signal

    from sleepify.fsutil import disk_full_message

    with contextlib.suppress(ValueError):  # not in the main thread (tests): keep the default
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="sleepify", standalone_mode=False)
    except click.exceptions.Abort as err:
        code = getattr(err.__cause__, "exit_code", 130)
        click.echo("Terminated." if code == 143 else "Aborted.", err=True)
        sys.exit(code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except SleepifyError as err:
        click.echo(f"{getattr(err, 'prefix', 'error')}: {err}", err=True)
        sys.exit(err.exit_code)
    except (OSError, RuntimeError) as err:
        message = disk_full_message(err)
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
