"""``sleepify push DIR --repo ORG/NAME``: upload an exported folder to the Hugging Face Hub
(sleepify/hub.py)."""

from __future__ import annotations

import click

from sleepify.cli.common import dry_run_option, verbosity_options


@click.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False), metavar="DIR")
@click.option("--repo", required=True, metavar="ORG/NAME", help="Hub model repo (created if needed)")
@click.option("--private", is_flag=True, help="create the repo private")
@click.option("--revision", help="branch to upload to (created if needed; default main)")
@click.option("--message", help="commit message")
@dry_run_option
@verbosity_options
def push(
    folder: str, repo: str, private: bool, revision: str | None, message: str | None, dry_run: bool
) -> None:
    """Upload DIR (a `sleepify export` folder) to the Hub; the token is HF_TOKEN or the saved login."""
    import sleepify.api as api

    if dry_run:
        from sleepify.hub import plan_push

        click.echo(plan_push(folder, repo, private=private, revision=revision))
        return
    api.push(folder, repo, private=private, revision=revision, message=message)
