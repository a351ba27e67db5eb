"""``sleepify export RUN --out DIR``: a clean Hugging Face folder with a model card (sleepify/export.py);
``--push-to-hub ORG/NAME`` uploads it afterwards (sleepify/hub.py)."""

from __future__ import annotations

import click

from sleepify.cli.common import dry_run_option, verbosity_options


@click.command("export")
@click.argument("run", required=False, metavar="[RUN]")
@click.option("--out", required=True, help="folder to write (written to a temporary folder, then renamed)")
@click.option(
    "--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="weights dtype (default: the recipe's)"
)
@click.option("--max-shard-size", help="largest safetensors shard, e.g. 2GB (default: the recipe's, 5GB)")
@click.option("--push-to-hub", "push_to_hub", metavar="ORG/NAME", help="upload the export to this Hub repo")
@click.option("--private", is_flag=True, default=None, help="create the Hub repo private")
@click.option(
    "--overwrite", is_flag=True, help="replace a non-empty --out folder (after the export completes)"
)
@dry_run_option
@verbosity_options
def export(
    run: str | None,
    out: str,
    dtype: str | None,
    max_shard_size: str | None,
    push_to_hub: str | None,
    private: bool | None,
    overwrite: bool,
    dry_run: bool,
) -> None:
    """Export RUN (a run folder, a stage's model folder; default: runs/latest) to --out."""
    import sleepify.api as api

    if dry_run:
        from sleepify.export import plan_export

        click.echo(plan_export(run, out, dtype=dtype, push_to_hub=push_to_hub, overwrite=overwrite))
        return
    api.export(
        run,
        out,
        dtype=dtype,
        max_shard_size=max_shard_size,
        push_to_hub=push_to_hub,
        private=private,
        overwrite=overwrite,
    )
