"""``sleepify push``: upload an exported model folder to the Hugging Face Hub through ``huggingface_hub``.

As huggingface_hub users expect:

- the repo is ``ORG/NAME``, or a bare ``NAME`` in the token owner's namespace (``HfApi.whoami``);
- the token is ``token`` (``--token``), else ``HF_TOKEN`` or the saved login (``hf auth login``), which
  ``huggingface_hub`` reads itself;
- ``create_repo(exist_ok=True)``; ``private=True`` makes a new repo private *and* an existing public repo
  private (``update_repo_settings``, logged) before anything is uploaded. Without ``private`` the visibility
  of an existing repo is left as it is (a private repo is never made public);
- ``create_branch`` for a ``revision`` other than main, then one ``upload_folder`` commit to it, or, with
  ``create_pr``, a pull request with that commit (the returned URL is the PR's).

Every failure (offline, unreachable Hub, no or bad token, no permission) becomes one clear
:class:`~sleepify.errors.SleepifyError` line that ends with the ``sleepify push`` command to retry, with the
same flags (a token passed on the command line shows as ``--token ...``, never its value); the local folder
is never modified.

Example::

    url = push("exports/tiny-sleep", "tiny-sleep", private=True, create_pr=True)
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

from sleepify.errors import SleepifyError
from sleepify.hub import hub_error, is_transport_error, short_error

__all__ = ["plan_push", "retry_command", "run_push"]


def _check(folder: Path, repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not (folder / "config.json").is_file():
        raise SleepifyError(f"{folder} is not a model folder (no config.json): run `sleepify export` first")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SleepifyError(
            f"--repo must be ORG/NAME or NAME (a Hugging Face model repo id), got {repo_id!r}: "
            f"{short_error(err)}"
        ) from None


def retry_command(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """The ``sleepify push`` command that repeats a push with the same flags (``--token ...`` stands for a
    token given explicitly: its value is never printed).

    Example::

        >>> retry_command("out", "me/m", private=True, revision="v1", token="hf_secret")
        'sleepify push out --repo me/m --private --revision v1 --token ...'
    """
    parts = ["sleepify", "push", shlex.quote(str(folder)), "--repo", shlex.quote(repo_id)]
    if private:
        parts.append("--private")
    if revision:
        parts += ["--revision", shlex.quote(revision)]
    if create_pr:
        parts.append("--create-pr")
    if commit_message:
        parts += ["--message", shlex.quote(commit_message)]
    if token:
        parts += ["--token", "..."]
    return " ".join(parts)


def plan_push(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """What :func:`run_push` would upload, as text (``sleepify push --dry-run``); the Hub is not contacted."""
    folder = Path(folder)
    _check(folder, repo_id)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    where = repo_id if "/" in repo_id else f"{repo_id} (in the token owner's namespace)"
    where += (f"@{revision}" if revision else "") + (" (private)" if private else "")
    if create_pr:
        where += " as a pull request"
    return f"push: {len(files)} files ({size / 1e6:.1f} MB) from {folder} to {where}\n" + "\n".join(
        f"  {p.relative_to(folder)}" for p in files
    )


def run_push(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    log: Callable[[str], None] | None = print,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (``ORG/NAME`` or a bare ``NAME``); returns the repo
    URL, or the pull request's URL with ``create_pr`` (see the module docstring).

    Example::

        url = push("exports/tiny-sleep", "me/tiny-sleep", revision="v1", token="hf_...")
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check(folder, repo_id)
    retry = retry_command(folder, repo_id, private, revision, create_pr, token, commit_message)
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(token=token)
    where = repo_id + (f"@{revision}" if revision else "")
    try:
        if "/" not in repo_id:  # a bare NAME: the token owner's namespace
            repo_id = f"{api.whoami()['name']}/{repo_id}"
            where = repo_id + (f"@{revision}" if revision else "")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not getattr(api.repo_info(repo_id, repo_type="model"), "private", True):
            api.update_repo_settings(repo_id, private=True, repo_type="model")
            if log is not None:
                log(f"{repo_id} existed and was public: made it private (--private)")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with sleepify",
            create_pr=create_pr or None,
        )
    except Exception as err:
        if not is_transport_error(err):
            raise
        raise hub_error(where, retry, err) from None
    url = str(url)
    pr_url = getattr(commit, "pr_url", None) if create_pr else None
    if log is not None:
        if pr_url:
            log(f"opened a pull request on {url} with {folder}: {pr_url}")
        else:
            log(f"pushed {folder} to {url}" + (f" (revision {revision})" if revision else ""))
    return str(pr_url) if pr_url else url


push = run_push  # the name before the stages moved (sleepify.hub.push)
