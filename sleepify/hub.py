"""``sleepify push``: upload an exported model folder to the Hugging Face Hub through ``huggingface_hub``.

``create_repo(exist_ok=True)`` (``private`` applies when the repo is created), ``create_branch`` for a
``revision`` other than main, then ``upload_folder``. The token is ``HF_TOKEN`` or the saved login
(``hf auth login``); ``huggingface_hub`` reads both. Every failure (offline, unreachable Hub, no or bad
token, no permission) becomes one clear :class:`~sleepify.errors.SleepifyError` line, and the local folder
is never modified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from sleepify.errors import SleepifyError

__all__ = ["push"]

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check(folder: Path, repo_id: str) -> None:
    if not (folder / "config.json").is_file():
        raise SleepifyError(f"{folder} is not a model folder (no config.json): run `sleepify export` first")
    if not REPO_ID.match(repo_id):
        raise SleepifyError(f"--repo must be ORG/NAME (a Hugging Face model repo id), got {repo_id!r}")


def plan_push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """What :func:`push` would upload, as text (``sleepify push --dry-run``); the Hub is not contacted."""
    folder = Path(folder)
    _check(folder, repo_id)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    where = repo_id + (f"@{revision}" if revision else "") + (" (private)" if private else "")
    return f"push: {len(files)} files ({size / 1e6:.1f} MB) from {folder} to {where}\n" + "\n".join(
        f"  {p.relative_to(folder)}" for p in files
    )


def push(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    log: Callable[[str], None] | None = print,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (``ORG/NAME``); returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    folder = Path(folder)
    _check(folder, repo_id)
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(token=token)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    retry = f"the export in {folder} is untouched; retry with `sleepify push {folder} --repo {repo_id}`"
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with sleepify",
        )
    except OfflineModeIsEnabled:
        raise SleepifyError(f"cannot push to {where}: HF_HUB_OFFLINE is set; {retry} when online") from None
    except LocalTokenNotFoundError:
        raise SleepifyError(
            f"cannot push to {where}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); {retry}"
        ) from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            hint = "the token is missing, invalid or cannot write there (set HF_TOKEN or run `hf auth login`)"
        else:
            hint = _short(err)
        raise SleepifyError(f"cannot push to {where} (HTTP {status}): {hint}; {retry}") from None
    except (ConnectionError, TimeoutError, OSError) as err:
        raise SleepifyError(
            f"cannot reach the Hugging Face Hub to push {where} ({_short(err)}); {retry}"
        ) from None
    except Exception as err:  # httpx / requests transport errors are not OSErrors
        if type(err).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise SleepifyError(
                f"cannot reach the Hugging Face Hub to push {where} ({_short(err)}); {retry}"
            ) from None
        raise
    url = str(url)
    if log is not None:
        log(f"pushed {folder} to {url}" + (f" (revision {revision})" if revision else ""))
    return url
