"""``sleepify bench [MODEL_DIR]``: decode latency, memory and sleep cost of a sleep-capable model against its
unconverted base model with a full KV cache (sleepify/stages/bench.py, docs/performance.md)."""

from __future__ import annotations

import click

from sleepify.cli.common import verbosity_options


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

    from sleepify import api
    from sleepify.stages.bench import format_report, write_json

    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be >= 1", param_hint="--threads")
        torch.set_num_threads(threads)
    res = api.bench(
        model,
        contexts=_int_list(contexts, "--contexts") if contexts else None,
        quick=quick,
        steps=steps,
        N=_int_list(passes, "--N"),
        repeats=repeats,
        device=device,
        compile=compile_step,
        log_to=lambda msg: click.echo(msg, err=True),
    )
    click.echo(format_report(res))
    if json_out:
        write_json(res, json_out)
        click.echo(f"wrote {json_out}", err=True)
