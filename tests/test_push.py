"""sleepify push: the upload at the huggingface_hub boundary (no network), and an unreachable Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi

from sleepify.cli.main import cli, main
from sleepify.errors import SleepifyError
from sleepify.stages.push import plan_push, push


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "sleep_hybrid"}')
    (out / "model.safetensors").write_bytes(b"\0" * 64)
    (out / "README.md").write_text("---\nlibrary_name: sleepify\n---\n")
    return out


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def hub() -> dict[str, bool]:
    """The fake Hub's repos: repo id -> private."""
    return {}


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, hub: dict[str, bool]) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []

    def whoami(self, token=None, **kw):  # noqa: ANN001, ANN202
        calls.append(("whoami", {"token": self.token}))
        return {"name": "alice", "type": "user"}

    def create_repo(self, repo_id, **kw):  # noqa: ANN001, ANN202
        calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kw}))
        hub.setdefault(repo_id, bool(kw.get("private")))  # exist_ok: an existing repo keeps its visibility
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id, **kw):  # noqa: ANN001, ANN202
        calls.append(("repo_info", {"repo_id": repo_id, **kw}))
        return SimpleNamespace(id=repo_id, private=hub[repo_id])

    def update_repo_settings(self, repo_id, **kw):  # noqa: ANN001, ANN202
        calls.append(("update_repo_settings", {"repo_id": repo_id, **kw}))
        hub[repo_id] = kw["private"]

    def create_branch(self, repo_id, **kw):  # noqa: ANN001, ANN202
        calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):  # noqa: ANN001, ANN202
        calls.append(
            ("upload_folder", {"files": sorted(p.name for p in Path(kw["folder_path"]).iterdir()), **kw})
        )
        if kw.get("create_pr"):
            return SimpleNamespace(pr_url=f"https://huggingface.co/{kw['repo_id']}/discussions/1")
        return SimpleNamespace(pr_url=None)

    for name, fn in [
        ("whoami", whoami),
        ("create_repo", create_repo),
        ("repo_info", repo_info),
        ("update_repo_settings", update_repo_settings),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ]:
        monkeypatch.setattr(HfApi, name, fn)
    return calls


def test_push_arguments(folder: Path, recorded: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    url = push(folder, "my-org/tiny-sleep", private=True, log=None)
    assert url == "https://huggingface.co/my-org/tiny-sleep"
    (name, create), (name2, _), (name3, upload) = recorded
    assert (name, name2, name3) == ("create_repo", "repo_info", "upload_folder")
    assert (
        create["repo_id"] == "my-org/tiny-sleep" and create["private"] is True and create["exist_ok"] is True
    )
    assert create["token"] == "hf_test_token"
    assert upload["repo_id"] == "my-org/tiny-sleep" and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == folder and upload["revision"] is None and not upload["create_pr"]
    assert upload["files"] == ["README.md", "config.json", "model.safetensors"]


def test_push_token_flag_wins_over_env(folder: Path, recorded: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    args = ["push", str(folder), "--repo", "org/name", "--token", "hf_cli_token"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert recorded[0][0] == "create_repo" and recorded[0][1]["token"] == "hf_cli_token"
    assert "hf_cli_token" not in result.output


def test_push_bare_name_is_in_the_token_owners_namespace(folder: Path, recorded: list) -> None:
    url = push(folder, "tiny-sleep", token="hf_alice", log=None)
    assert url == "https://huggingface.co/alice/tiny-sleep"
    assert [c[0] for c in recorded] == ["whoami", "create_repo", "upload_folder"]
    assert recorded[0][1]["token"] == "hf_alice"
    assert recorded[1][1]["repo_id"] == recorded[2][1]["repo_id"] == "alice/tiny-sleep"
    assert "token owner's namespace" in plan_push(folder, "tiny-sleep")  # the dry run does not ask the Hub
    with pytest.raises(SleepifyError, match="ORG/NAME or NAME"):
        push(folder, "a/b/c", log=None)


def test_push_create_pr(folder: Path, recorded: list) -> None:
    result = CliRunner().invoke(
        cli,
        ["push", str(folder), "--repo", "org/name", "--revision", "v1", "--create-pr"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    upload = recorded[-1][1]
    assert upload["create_pr"] is True and upload["revision"] == "v1"
    assert "https://huggingface.co/org/name/discussions/1" in result.output
    assert push(folder, "org/name", create_pr=True, log=None).endswith("/discussions/1")


def test_push_private_makes_an_existing_public_repo_private(
    folder: Path, recorded: list, hub: dict[str, bool]
) -> None:
    hub["org/public"] = False
    hub["org/secret"] = True
    logged: list[str] = []
    push(folder, "org/public", private=True, log=logged.append)
    kinds = [c[0] for c in recorded]
    assert kinds == ["create_repo", "repo_info", "update_repo_settings", "upload_folder"]  # before the upload
    assert recorded[2][1]["private"] is True and hub["org/public"] is True
    assert "made it private" in logged[0]
    recorded.clear()
    push(folder, "org/secret", log=None)  # without --private an existing repo keeps its visibility
    assert [c[0] for c in recorded] == ["create_repo", "upload_folder"] and hub["org/secret"] is True


def test_push_cli_revision_creates_branch(folder: Path, recorded: list) -> None:
    result = CliRunner().invoke(
        cli, ["push", str(folder), "--repo", "org/name", "--revision", "v1"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    kinds = [c[0] for c in recorded]
    assert kinds == ["create_repo", "create_branch", "upload_folder"]
    assert recorded[0][1]["private"] is False
    assert recorded[1][1]["branch"] == "v1" and recorded[1][1]["exist_ok"] is True
    assert recorded[2][1]["revision"] == "v1"
    assert "pushed" in result.output


def test_push_rejects_bad_input(folder: Path, tmp_path: Path, recorded: list) -> None:
    for bad in ("a/b/c", "../name", "org/na me"):
        with pytest.raises(SleepifyError, match="ORG/NAME or NAME"):
            push(folder, bad, log=None)
    with pytest.raises(SleepifyError, match="no config.json"):
        push(tmp_path, "org/name", log=None)
    assert recorded == []


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return int(exc.value.code), captured.err


def test_offline_hub_is_one_line_and_leaves_folder(
    folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real client with HF_HUB_OFFLINE (set for every test in conftest): one line, folder untouched."""
    import huggingface_hub.constants as const

    monkeypatch.setattr(const, "HF_HUB_OFFLINE", True)
    before = digest(folder)
    code, err = run_main(["push", str(folder), "--repo", "org/name"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot push to org/name"), err
    assert "untouched" in lines[0]
    assert digest(folder) == before


@pytest.mark.parametrize("kind", ["connection", "timeout", "http401"])
def test_unreachable_hub_is_one_line(
    folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    httpx = pytest.importorskip("httpx2")  # huggingface_hub's transport
    from huggingface_hub.errors import HfHubHTTPError

    def create_repo(self, repo_id, **kw):  # noqa: ANN001, ANN202
        if kind == "connection":
            raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
        if kind == "timeout":
            raise TimeoutError("timed out")
        request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
        raise HfHubHTTPError("401 Unauthorized", response=httpx.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    before = digest(folder)
    code, err = run_main(["push", str(folder), "--repo", "org/name"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "org/name" in lines[0], err
    if kind == "http401":
        assert "HF_TOKEN" in lines[0]
    else:
        assert "cannot reach the Hugging Face Hub" in lines[0]
    assert digest(folder) == before


def test_retry_hint_repeats_the_flags(
    folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as const

    monkeypatch.setattr(const, "HF_HUB_OFFLINE", True)
    args = ["push", str(folder), "--repo", "org/name", "--private", "--revision", "v1", "--create-pr"]
    code, err = run_main([*args, "--message", "first try", "--token", "hf_secret_value"], capsys)
    assert code == 2 and "hf_secret_value" not in err
    retry = (
        f"sleepify push {folder} --repo org/name --private --revision v1 --create-pr --message 'first try'"
    )
    assert f"retry with `{retry} --token ...`" in err, err
    code, err = run_main(args, capsys)  # the token from the environment: no --token in the hint
    assert f"retry with `sleepify push {folder} --repo org/name --private --revision v1 --create-pr`" in err
