"""``sleepify doctor``: versions, devices, which backend each op runs here and why, a self-check.

The logic is in ``sleepify/doctor.py``.
"""

from __future__ import annotations

import json
import sys

import click


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda")
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    type=click.Choice(["float32", "bfloat16", "float16"]),
    help="dtypes to explain and check (repeatable; default float32, plus bfloat16 on CUDA)",
)
@click.option("--no-check", is_flag=True, help="only explain the backends; skip the self-check")
def doctor(as_json: bool, device: str, dtypes: tuple[str, ...], no_check: bool) -> None:
    """Show versions, devices and the backend of every op here; check each against the torch reference.

    Exits with 1 when a backend that backend='auto' would use fails its check.
    """
    from sleepify.doctor import format_report, run_doctor

    def progress(line: str) -> None:
        if not as_json:
            click.echo(line, err=True, nl=False)
            click.echo("\r" + " " * len(line) + "\r", err=True, nl=False)

    report = run_doctor(
        device=device, dtypes=list(dtypes) or None, self_check=not no_check, progress=progress
    )
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(format_report(report))
    if not report["ok"]:
        sys.exit(1)
