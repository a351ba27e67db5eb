"""``sleepify push DIR --repo ORG/NAME``: upload an exported folder to the Hugging Face Hub
(sleepify/stages/push.py)."""

from __future__ import annotations

import click

from sleepify.cli.common import dry_run_option, verbosity_options


@click.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False), metavar="DIR")
@click.option(
    "--repo",
    required=True,
    metavar="ORG/NAME",
    help="Hub model repo (created if needed); a bare NAME is in the token owner's namespace",
)
@click.option("--private", is_flag=True, help="make the repo private (a new one, or an existing public one)")
@click.option("--revision", help="branch to upload to (created if needed; default main)")
@click.option("--create-pr", is_flag=True, help="open a pull request instead of committing to the branch")
@click.option("--token", metavar="TOKEN", help="Hugging Face token (default: HF_TOKEN or the saved login)")
@click.option("--message", help="commit message")
@dry_run_option
@verbosity_options
def push(
    folder: str,
    repo: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    token: str | None,
    message: str | None,
    dry_run: bool,
) -> None:
    """Upload DIR (a `sleepify export` folder) to the Hub; the token is --token, HF_TOKEN or the saved
    login."""
    import sleepify.api as api

    if dry_run:
        click.echo(api.plan_push(folder, repo, private=private, revision=revision, create_pr=create_pr))
        return
    api.push(
        folder, repo, private=private, revision=revision, message=message, token=token, create_pr=create_pr
    )
