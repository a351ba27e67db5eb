"""``sleepify bench [MODEL_DIR]``: decode latency, memory and sleep cost of a sleep-capable model against its
unconverted base model with a full KV cache (sleepify/benchmarking.py, docs/performance.md)."""

from __future__ import annotations

import click

from sleepify.cli.common import verbosity_options
from sleepify.errors import SleepifyError


def _int_list(text: str, option: str) -> list[int]:
    """``"1024,4k,16k"`` -> ``[1024, 4096, 16384]`` (``k`` = 1024)."""
    values = []
    for part in (p.strip().lower().replace("_", "") for p in text.split(",")):
        if not part:
            continue
        scale = 1024 if part.endswith("k") else 1
        try:
            values.append(int(part.removesuffix("k")) * scale)
        except ValueError:
            raise click.BadParameter(
                f"expected comma-separated counts, got {text!r}", param_hint=option
            ) from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"expected positive counts, got {text!r}", param_hint=option)
    return values


@click.command("bench")
@click.argument("model", required=False, metavar="[MODEL_DIR]")
@click.option(
    "--contexts",
    help="context lengths in tokens, comma-separated, k = 1024 [default: 1k,4k,16k; --quick: 256,1k,4k]",
)
@click.option("--quick", is_flag=True, help="short contexts, fewer steps and repeats (a fast smoke run)")
@click.option("--steps", type=int, help="decode steps timed per context [default: 32; --quick: 8]")
@click.option(
    "--N", "passes", default="1,2,4", show_default=True, help="sleep passes N for the sleep-cost table"
)
@click.option(
    "--repeats", type=int, help="repeats of the sleep-cost timings (best of) [default: 5; --quick: 1]"
)
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda")
@click.option("--threads", type=int, help="torch CPU threads (default: torch's)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the numbers to this file")
@click.option(
    "--compile",
    "compile_step",
    is_flag=True,
    help="also time decoding with the decode step torch.compile'd (SleepDecoder(compile=True))",
)
@verbosity_options
def bench(
    model: str | None,
    contexts: str | None,
    quick: bool,
    steps: int | None,
    passes: str,
    repeats: int | None,
    device: str,
    threads: int | None,
    json_out: str | None,
    compile_step: bool,
) -> None:
    """Benchmark decoding of MODEL_DIR (default: a small converted Qwen2 built in a temp folder)."""
    import torch

    from sleepify.benchmarking import DEFAULT_CONTEXTS, QUICK_CONTEXTS, format_report, run_bench, write_json

    ctx = (
        _int_list(contexts, "--contexts") if contexts else list(QUICK_CONTEXTS if quick else DEFAULT_CONTEXTS)
    )
    n_list = _int_list(passes, "--N")
    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be >= 1", param_hint="--threads")
        torch.set_num_threads(threads)
    source = None
    if model is not None:
        from sleepify.api import model_folder

        source = model_folder(model)
    if device not in ("auto", "cpu") and device.startswith("cuda") and not torch.cuda.is_available():
        raise SleepifyError("--device cuda: no CUDA device is available")
    res = run_bench(
        source,
        contexts=ctx,
        steps=steps if steps is not None else (8 if quick else 32),
        passes=n_list,
        repeats=repeats if repeats is not None else (1 if quick else 5),
        device=device,
        log=lambda msg: click.echo(msg, err=True),
        compile=compile_step,
    )
    click.echo(format_report(res))
    if json_out:
        write_json(res, json_out)
        click.echo(f"wrote {json_out}", err=True)
