"""The Hugging Face Hub side of sleepify: where a model comes from and who owns a repo.

- :func:`resolve_source`: an alias (``sleepify/models/registry.py``), a local folder or a Hub id -> a local
  folder holding ``config.json`` (a Hub id is downloaded with ``snapshot_download``, config, tokenizer and
  safetensors files only; ``builtin:NAME`` sources are the convert stage's own);
- :func:`resolve_repo_id`: ``ORG/NAME`` or a bare ``NAME`` in the token owner's namespace;
- the one-line errors for every way talking to the Hub fails (used by ``push`` and ``export``).

The stages that use it are ``sleepify.stages.convert`` and ``sleepify.stages.push``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleepify.errors import ModelLoadError, SleepifyError
from sleepify.models.registry import ALIASES, ModelAlias, get_alias

__all__ = ["HUB_PATTERNS", "Source", "resolve_repo_id", "resolve_source"]

HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "*.jinja",
]


@dataclass
class Source:
    folder: Path
    name: str  # alias, or the folder / repo name (used for the default run directory)
    alias: ModelAlias | None
    hub_id: str | None


def resolve_source(source: str, revision: str | None = None, config_only: bool = False) -> Source:
    """An alias, a local folder or a Hub id -> a local folder holding ``config.json`` (``config_only``: a
    Hub download fetches ``config.json`` and the weights' index only, no weights)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} holds no config.json: is it a Hugging Face model folder?")
        return Source(path, path.resolve().name, None, None)
    alias = ALIASES.get(source.lower())
    if alias is None and source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return Source(_download(source, revision, config_only), source.split("/")[1].lower(), None, source)
    if alias is None:
        if os.sep in source or source.startswith("."):
            raise ModelLoadError(f"no such folder: {source}")
        get_alias(source)  # raises with the closest aliases
    return Source(_download(alias.hub_id, revision, config_only), alias.name, alias, alias.hub_id)


_HUB_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _download(repo_id: str, revision: str | None, config_only: bool = False) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with transformers
        raise ModelLoadError(f"huggingface_hub is needed to download {repo_id}: {err}") from None
    owner, _, name = repo_id.partition("/")
    if not all(_HUB_PART.match(part) and ".." not in part for part in (owner, name)):
        raise ModelLoadError(
            f"{repo_id!r} is neither a local folder nor a valid Hub id (ORG/NAME: letters, digits, '-', '_', "
            "'.'; no '..')"
        )
    try:
        patterns = ["config.json", "model.safetensors.index.json"] if config_only else HUB_PATTERNS
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise ModelLoadError(
            f"{repo_id} is gated on the Hugging Face Hub: accept its license and log in "
            "(`hf auth login`), or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{repo_id} was not found on the Hugging Face Hub (or is private)") from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"{repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"cannot reach the Hugging Face Hub to download {repo_id} (offline, HF_HUB_OFFLINE set, or no "
            "network) and it is not in the local cache; download it where the Hub is reachable and pass "
            "the local folder instead"
        ) from None
    except OSError as err:
        raise ModelLoadError(
            f"cannot download {repo_id} from the Hugging Face Hub ({err}); a local folder works too"
        ) from None


def short_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def hub_error(where: str, retry: str | None, err: BaseException) -> SleepifyError:
    """One line for a failure to talk to the Hub (:func:`is_transport_error`), ending with ``retry``."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    tail = f"; the export is untouched; retry with `{retry}`" if retry else ""
    if isinstance(err, OfflineModeIsEnabled):
        return SleepifyError(
            f"cannot push to {where}: HF_HUB_OFFLINE is set{tail}" + (" when online" * bool(tail))
        )
    login = "pass --token, set HF_TOKEN or run `hf auth login`"
    if isinstance(err, LocalTokenNotFoundError):
        return SleepifyError(f"cannot push to {where}: no Hugging Face token ({login}){tail}")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = (
            f"the token is missing, invalid or cannot write there ({login})"
            if status in (401, 403)
            else short_error(err)
        )
        return SleepifyError(f"cannot push to {where} (HTTP {status}): {hint}{tail}")
    return SleepifyError(f"cannot reach the Hugging Face Hub to push {where} ({short_error(err)}){tail}")


def is_transport_error(err: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(
        err,
        (
            OfflineModeIsEnabled,
            LocalTokenNotFoundError,
            HfHubHTTPError,
            ConnectionError,
            TimeoutError,
            OSError,
        ),
    ):
        return True
    # httpx / requests transport errors are not OSErrors
    return type(err).__module__.startswith(("httpx", "httpcore", "requests", "urllib3"))


def resolve_repo_id(repo_id: str, token: str | None = None) -> str:
    """``ORG/NAME`` as it is; a bare ``NAME`` in the namespace of the token's owner (``HfApi.whoami``, as
    ``huggingface_hub`` resolves it). A Hub failure raises a one-line :class:`SleepifyError`.

    Example::

        repo_id = resolve_repo_id("tiny-sleep")  # "me/tiny-sleep"
    """
    if "/" in repo_id:
        return repo_id
    from huggingface_hub import HfApi

    try:
        owner = HfApi(token=token or os.environ.get("HF_TOKEN") or None).whoami()["name"]
    except Exception as err:
        if not is_transport_error(err):
            raise
        raise hub_error(f"{repo_id} (the token owner's namespace)", None, err) from None
    return f"{owner}/{repo_id}"


_MOVED = {"push": "run_push", "plan_push": "plan_push", "retry_command": "retry_command"}


def __getattr__(name: str) -> Any:
    """``sleepify.hub.push`` and ``plan_push`` moved to :mod:`sleepify.stages.push` (deprecated aliases)."""
    if name in _MOVED:
        import importlib
        import warnings

        moved = f"sleepify.hub.{name} moved to sleepify.stages.push.{_MOVED[name]}"
        warnings.warn(moved, DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("sleepify.stages.push"), _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
