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

from sleepify.errors import SleepifyError


def _model_folder(source: str | None) -> Path | str:
    """A local model folder (a stage folder with ``model/``; None = runs/latest) or a Hub id ORG/NAME."""
    from sleepify.evaluation import resolve_model_dir

    if source and not Path(source).exists() and source.count("/") == 1 and not source.startswith((".", "/")):
        return source  # a Hub repo id: transformers downloads it
    return resolve_model_dir(source, Path("runs"))


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
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, help="sampling temperature (sampling unless --greedy)")
@click.option("--top-p", type=float, help="nucleus sampling mass")
@click.option("--top-k", type=int, help="sample among the k most likely tokens")
@click.option("--greedy", is_flag=True, help="argmax decoding (ignores temperature / top-p)")
@click.option("--seed", type=int, default=0, show_default=True, help="sampling seed")
@click.option(
    "--stop", "stops", multiple=True, help="stop a sequence when its text contains STR (repeatable)"
)
@click.option("--batch-size", type=int, default=8, show_default=True, help="prompts decoded together")
@click.option("--N", "passes", type=int, help="sleep passes per window (default: the model config)")
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
) -> None:
    """Generate from a sleep-capable model folder (an export, a stage's model, or runs/latest)."""
    texts = list(prompts) + [Path(f).read_text() for f in prompt_files]
    if not texts:
        raise click.UsageError("give a prompt: --prompt TEXT or --prompt-file FILE")
    if batch_size < 1:
        raise click.UsageError("--batch-size must be >= 1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import sleepify  # noqa: F401  (registers the model types)
    from sleepify.generation import SleepDecoder
    from sleepify.generation import generate as run_generate

    folder = _model_folder(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:  # also: a Hub id that cannot be reached
        raise SleepifyError(f"{folder} has no usable tokenizer ({str(err).splitlines()[0]})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch_dtype = {
        "auto": "auto",
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }
    net = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype[dtype]).eval()
    if getattr(net.config, "model_type", None) != "sleep_hybrid":
        raise SleepifyError(f"{folder} is not a sleep-capable model (model_type {net.config.model_type!r})")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device)
    try:
        gen_cfg = GenerationConfig.from_pretrained(folder)
    except OSError:
        gen_cfg = GenerationConfig()
    do_sample = not greedy and (
        temperature is not None or top_p is not None or top_k is not None or gen_cfg.do_sample
    )
    temperature = temperature if temperature is not None else (gen_cfg.temperature or 1.0)
    top_p = top_p if top_p is not None else (gen_cfg.top_p or 1.0)
    top_k = top_k if top_k is not None else (gen_cfg.top_k if gen_cfg.do_sample else None)
    eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tokenizer.eos_token_id

    stream = not no_stream and len(texts) == 1
    total_tokens, total_sleeps, start = 0, 0, time.perf_counter()
    for first in range(0, len(texts), batch_size):
        batch = texts[first : first + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)

        def on_token(row: int, token: int, piece: str | None) -> None:
            if stream and piece:
                click.echo(piece, nl=False)
                sys.stdout.flush()

        decoder = SleepDecoder(net, backend=backend, passes=passes, compile=compile_step)
        res = run_generate(
            net,
            enc.input_ids,
            enc.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            eos_token_id=eos,
            stop=stops,
            tokenizer=tokenizer,
            seed=seed,
            on_token=on_token,
            decoder=decoder,
        )
        total_tokens += sum(len(t) for t in res.tokens)
        total_sleeps += res.sleeps
        if stream:
            click.echo()
        else:
            for i, text in enumerate(res.texts or []):
                click.echo(f"=== [{first + i}] ({res.finish[i]}) ===")
                click.echo(text)
    elapsed = time.perf_counter() - start
    cfg = net.config
    click.echo(
        f"[{total_tokens} tokens in {elapsed:.2f}s ({total_tokens / max(elapsed, 1e-9):.1f} tok/s), "
        f"{total_sleeps} sleep(s); L={cfg.sleep_window}, N={passes or cfg.sleep_passes}, "
        f"eviction={cfg.eviction}, device={device}]",
        err=True,
    )
