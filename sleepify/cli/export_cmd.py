"""``sleepify export RUN --out DIR``: a clean Hugging Face folder with a model card
(sleepify/stages/export.py);
``--push-to-hub ORG/NAME`` uploads it afterwards (sleepify/stages/push.py)."""

from __future__ import annotations

import click

from sleepify.cli.common import dry_run_option, verbosity_options


@click.command("export")
@click.argument("run", required=False, metavar="[RUN]")
@click.option("--out", required=True, help="folder to write (written to a temporary folder, then renamed)")
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    help="weights dtype (default: the model's own, or the recipe's export.dtype)",
)
@click.option("--max-shard-size", help="largest safetensors shard, e.g. 2GB (default: the recipe's, 5GB)")
@click.option(
    "--push-to-hub",
    "push_to_hub",
    metavar="ORG/NAME",
    help="upload the export to this Hub repo (a bare NAME: the token owner's namespace)",
)
@click.option(
    "--private", is_flag=True, default=None, help="make the Hub repo private (new, or existing and public)"
)
@click.option("--revision", help="Hub branch to push to (created if needed; default main)")
@click.option("--create-pr", is_flag=True, help="push as a pull request instead of a commit to the branch")
@click.option("--token", metavar="TOKEN", help="Hugging Face token (default: HF_TOKEN or the saved login)")
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
    revision: str | None,
    create_pr: bool,
    token: str | None,
    overwrite: bool,
    dry_run: bool,
) -> None:
    """Export RUN (a run folder, a stage's model folder; default: runs/latest) to --out."""
    import sleepify.api as api

    if dry_run:
        click.echo(
            api.plan_export(
                run,
                out,
                dtype=dtype,
                push_to_hub=push_to_hub,
                overwrite=overwrite,
                private=private,
                revision=revision,
                create_pr=create_pr,
            )
        )
        return
    api.export(
        run,
        out,
        dtype=dtype,
        max_shard_size=max_shard_size,
        push_to_hub=push_to_hub,
        private=private,
        revision=revision,
        create_pr=create_pr,
        token=token,
        overwrite=overwrite,
    )
