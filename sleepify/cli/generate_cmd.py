"""``sleepify generate DIR --prompt TEXT``: streaming, sleep-capable generation (sleepify/generation.py).

The prompt is read window by window (every full window is slept on and evicted), the last partial window
is the wake context, and the model sleeps again each time generation fills the window. One wake forward
over one token per generated token (incremental decoding).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from sleepify.cli.common import FiniteFloat, count, dry_run_option, verbosity_options
from sleepify.errors import SleepifyError


@click.command("generate")
@click.argument("model", required=False, metavar="[DIR]")
@click.option("--prompt", "prompts", multiple=True, help="prompt text (repeat for a batch)")
@click.option(
    "--prompt-file",
    "prompt_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="read a prompt from a file (repeat for a batch)",
)
@click.option("--max-new-tokens", type=count(1), default=128, show_default=True)
@click.option(
    "--temperature",
    type=FiniteFloat(min=0, min_open=True),
    help="sampling temperature (sampling unless --greedy)",
)
@click.option("--top-p", type=FiniteFloat(min=0, max=1, min_open=True), help="nucleus sampling mass")
@click.option("--top-k", type=count(1), help="sample among the k most likely tokens")
@click.option("--greedy", is_flag=True, help="argmax decoding (ignores temperature / top-p)")
@click.option("--seed", type=count(0), default=0, show_default=True, help="sampling seed")
@click.option(
    "--stop", "stops", multiple=True, help="stop a sequence when its text contains STR (repeatable)"
)
@click.option("--batch-size", type=count(1), default=8, show_default=True, help="prompts decoded together")
@click.option("--N", "passes", type=count(1), help="sleep passes per window (default: the model config)")
@click.option("--backend", default="auto", show_default=True, help="ops backend: auto, torch, triton, ...")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
)
@click.option("--no-stream", is_flag=True, help="print the texts at the end instead of token by token")
@click.option(
    "--compile",
    "compile_step",
    is_flag=True,
    help="torch.compile the decode step's blocks (the first steps pay the compilation)",
)
@dry_run_option
@verbosity_options
def generate(
    model: str | None,
    prompts: tuple[str, ...],
    prompt_files: tuple[str, ...],
    max_new_tokens: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    greedy: bool,
    seed: int,
    stops: tuple[str, ...],
    batch_size: int,
    passes: int | None,
    backend: str,
    device: str,
    dtype: str,
    no_stream: bool,
    compile_step: bool,
    dry_run: bool,
) -> None:
    """Generate from a sleep-capable model folder (an export, a stage's model, or runs/latest)."""
    texts = list(prompts)
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
            raise SleepifyError(f"--prompt {i + 1} is not valid UTF-8 text") from None
        if not text:
            raise SleepifyError(f"--prompt {i + 1} is empty: give the text to continue")
    for name in prompt_files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            msg = f"--prompt-file {name} is not UTF-8 text (byte {err.start}): save it as UTF-8"
            raise SleepifyError(msg) from None
        if not text:
            raise SleepifyError(f"--prompt-file {name} is empty: give a file with the text to continue")
        texts.append(text)
    if not texts:
        raise click.UsageError("give a prompt: --prompt TEXT or --prompt-file FILE")
    if batch_size < 1:
        raise click.UsageError("--batch-size must be >= 1")

    import sleepify.api as api

    folder = api.model_folder(model)
    if dry_run:
        click.echo(
            f"generate: {folder}, {len(texts)} prompt(s) in batches of {batch_size}, up to "
            f"{max_new_tokens} new tokens, {'greedy' if greedy else 'sampling'}, "
            f"N={passes or 'the model config'}, device={device}"
        )
        return
    stream = not no_stream and len(texts) == 1

    def on_token(row: int, token: int, piece: str | None) -> None:
        if stream and piece:
            click.echo(piece, nl=False)
            sys.stdout.flush()

    start = time.perf_counter()
    res = api.generate(
        folder, texts, max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_p=top_p,
        top_k=top_k, seed=seed, stop=stops, batch_size=batch_size, N=passes, backend=backend, device=device,
        dtype=dtype, compile=compile_step, on_token=on_token,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if stream:
        click.echo()
    else:
        for i, text in enumerate(res.texts or []):
            click.echo(f"=== [{i}] ({res.finish[i]}) ===")
            click.echo(text)
    total_tokens = sum(len(t) for t in res.tokens)
    cfg = res.settings
    click.echo(
        f"[{total_tokens} tokens in {elapsed:.2f}s ({total_tokens / max(elapsed, 1e-9):.1f} tok/s), "
        f"{res.sleeps} sleep(s); L={cfg['L']}, N={cfg['N']}, eviction={cfg['eviction']}, "
        f"device={cfg['device']}]",
        err=True,
    )
