"""Entry point of the ``sleepify`` command.

Sub-commands live one per module in ``sleepify/cli/`` and are imported lazily, so ``sleepify --help``
stays fast and a command's heavy imports (torch, transformers) only happen when it runs. That also lets
the CPU threading policy (``sleepify/threads.py``) take effect: it must be set before torch is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import click

from sleepify import __version__
from sleepify.errors import SleepifyError, one_line, shown
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
    "plot": "sleepify.cli.plot_cmd:plot",
    "bench": "sleepify.cli.bench_cmd:bench",
    "quickstart": "sleepify.cli.quickstart_cmd:quickstart",
    "doctor": "sleepify.cli.doctor_cmd:doctor",
}

# The first paragraph of each command's help, so `sleepify --help` lists the commands without importing
# them (a stage module imports the recipe schema: pydantic, ~0.7 s). tests/test_cli_startup.py checks that
# these match the commands' own help.
SUMMARIES: dict[str, str] = {
    "bench": "Benchmark decoding of MODEL_DIR (default: a small converted Qwen2 built in a temp folder).",
    "convert": "Convert MODEL (alias such as ouro-1.4b, Hub id ORG/NAME, or local folder) into a "
    "sleep-capable hybrid.",
    "data": "Generate a task dataset (rule110, depo, gsm-infinite) or prepare any dataset (prepare).",
    "doctor": "Show versions, devices and the backend of every op here; check each against the torch "
    "reference.",
    "eval": "Exact-match accuracy and mean answer-token loss per difficulty bucket on the held-out split "
    "(task, prompt/answer and chat data), or loss and perplexity (plain text).",
    "export": "Export RUN (a run folder, a stage's model folder; default: runs/latest) to --out.",
    "generate": "Generate from a sleep-capable model folder (an export, a stage's model, or runs/latest).",
    "models": "List what `sleepify convert` accepts: the model aliases (Hub id and default recipe), the "
    "built-in models (`builtin:NAME`, trained from scratch), and the architectures (config.json "
    "model_type) a local folder or Hub id may have; those get a default plan when no recipe gives one.",
    "plot": "Plot the training curves (loss, learning rate, gradient norm) of runs, overlaid in one PNG.",
    "push": "Upload DIR (a `sleepify export` folder) to the Hub; the token is --token, HF_TOKEN or the "
    "saved login.",
    "quickstart": "Run data -> convert -> warmup -> train -> eval -> export -> generate on a tiny embedded "
    "model (CPU).",
    "recipes": "List, show and validate recipes.",
    "train": "Full sleep fine-tuning with N sleep passes at every window boundary.",
    "warmup": "SSM-only warm-up: train only the inserted Jet layers (or the SSM layers of a model without "
    "insertions; train.trainable overrides), hard eviction, N sleep passes.",
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but from SUMMARIES: listing the commands imports none of them."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in SUMMARIES:
                # a bare Command carries the summary: click's own shortening, nothing imported
                rows.append((name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)))
            elif (command := self.get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sleepify")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch (OMP_NUM_THREADS); default: one per core, passive OpenMP wait",
)
def cli(quiet: bool, verbose: bool, threads: int | None) -> None:
    """Turn pretrained language models into sleep-capable SSM-attention hybrids.

    Shell completion: eval "$(_SLEEPIFY_COMPLETE=bash_source sleepify)" in ~/.bashrc (zsh_source,
    fish_source for zsh and fish).
    """
    apply_thread_policy(threads)
    from sleepify.cli.output import configure_logging  # -q / -v: what the library's logging shows

    configure_logging(-1 if quiet else 1 if verbose else 0)


def _on_sigterm(signum: int, frame: object) -> None:
    from sleepify.errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a SleepifyError becomes one clear line on stderr and exit code 2 (a stopped run 130 on
    SIGINT, 143 on SIGTERM); a usage error, a full disk and an OS error on a path are one line too."""
    import signal

    apply_thread_policy()  # before any command imports torch (the user's environment wins)

    from sleepify.fsutil import os_error_message

    with contextlib.suppress(ValueError):  # not in the main thread (tests): keep the default
        signal.signal(signal.SIGTERM, _on_sigterm)
    for stream in (sys.stdout, sys.stderr):  # a file name of non-UTF-8 bytes prints as those bytes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")
    try:
        _check_arguments(sys.argv[1:] if argv is None else argv)
        cli.main(args=argv, prog_name="sleepify", standalone_mode=False)
    except click.exceptions.Abort as err:
        cause = err.__cause__
        if isinstance(cause, EOFError):  # click turns EOFError into Abort: a truncated file, not Ctrl-C
            _fail(f"unexpected end of a file ({one_line(str(cause)) or 'EOFError'}): a truncated input?")
        _exit_stopped(getattr(cause, "exit_code", 130))
    except click.UsageError as err:
        ctx = err.ctx
        where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        _fail(f"{one_line(err.format_message()).rstrip('.')}{where}", 2)
    except click.ClickException as err:
        _fail(one_line(err.format_message()), 2)
    except SleepifyError as err:
        _exit_if_stopped(err)
        click.echo(f"{getattr(err, 'prefix', 'error')}: {err}", err=True)
        sys.exit(err.exit_code)
    except Exception as err:  # a full disk, a read-only or vanished path anywhere: one line too
        _exit_if_stopped(err)
        message = os_error_message(err, output=False)
        if message is None:
            raise
        _fail(message)


def _exit_if_stopped(err: BaseException) -> None:
    """An error that only happened because Ctrl-C or SIGTERM landed inside a C extension (which rewraps
    it, e.g. pybind11's "initialization failed") is the user's stop, with its exit code, not an error."""
    from sleepify.errors import Interrupted, interrupt_within

    stop = None if isinstance(err, Interrupted) else interrupt_within(err)
    if stop is not None:
        _exit_stopped(getattr(stop, "exit_code", 130))


def _exit_stopped(code: int) -> None:
    """The end of a run the user stopped: 143 on SIGTERM, 130 on Ctrl-C."""
    click.echo("Terminated." if code == 143 else "Aborted.", err=True)
    sys.exit(code)


def _check_arguments(argv: list[str]) -> None:
    """Arguments that no file name or text can hold (a NUL byte; characters the file system's encoding
    cannot write, which a shell never passes but a caller of main() can) are refused here, once, rather
    than by whichever os call meets them first."""
    import os

    for i, arg in enumerate(argv, start=1):
        try:
            bad = "\0" in arg or not os.fsencode(arg)
        except UnicodeEncodeError:
            bad = True
        if bad and arg:
            raise click.UsageError(f"argument {i} ({shown(arg, 40)}) holds a NUL byte or a character no file "
                                   "name or text can hold")  # fmt: skip


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)
