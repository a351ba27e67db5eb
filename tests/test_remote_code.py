"""Exports carry self-contained remote code (sleepify/remote_code.py): every shipped line is the package's
line, and an export loads, computes the same logits and generates the same tokens in a Python process where
sleepify (and fla, flash-attn, triton, datasets) cannot be imported."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import sleepify  # noqa: F401
from sleepify.remote_code import AUTO_MAP, OPTIONAL_PACKAGES, bundle_modules, flat_name, render_module
from sleepify.stages.convert import convert
from sleepify.stages.export import export
from tests.test_generation import build_tiny_run

# ------------------------------------------------------------------------------------- the shipped source


def _source_path(module: str) -> Path:
    root = Path(sleepify.__file__).parent.parent
    path = root / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


class _Absolute(ast.NodeTransformer):
    """Package form: relative sleepify imports made absolute."""

    def __init__(self, module: str) -> None:
        is_package = _source_path(module).name == "__init__.py"
        self.package = module if is_package else module.rsplit(".", 1)[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        if node.level:
            parts = self.package.split(".")
            base = parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else [])
            return ast.ImportFrom(module=".".join(base), names=node.names, level=0)
        return node


class _Unflatten(ast.NodeTransformer):
    """Shipped form back to package form: flat relative imports -> dotted; try/except-raise unwrapped."""

    def __init__(self, flat_to_dotted: dict[str, str]) -> None:
        self.flat_to_dotted = flat_to_dotted

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        if node.level == 1:
            return ast.ImportFrom(module=self.flat_to_dotted[node.module], names=node.names, level=0)
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        body = node.body
        reraise = (
            len(node.handlers) == 1
            and ast.unparse(node.handlers[0].type) == "ImportError"
            and [type(s) for s in node.handlers[0].body] == [ast.Raise]
            and node.handlers[0].body[0].exc is None
        )
        if reraise and len(body) == 1 and isinstance(body[0], ast.Import | ast.ImportFrom):
            names = [a.name for a in body[0].names] if isinstance(body[0], ast.Import) else [body[0].module]
            assert names[0].split(".")[0] in OPTIONAL_PACKAGES, ast.unparse(node)
            return body[0]
        return self.generic_visit(node)


def test_every_shipped_line_is_the_package_line() -> None:
    modules = bundle_modules()
    flat_to_dotted = {flat_name(m): m for m in modules}
    assert len(flat_to_dotted) == len(modules)  # flat names are unique
    for module in modules:
        shipped = ast.parse(render_module(module))
        package = ast.parse(_source_path(module).read_text())
        assert ast.dump(_Unflatten(flat_to_dotted).visit(shipped)) == ast.dump(
            _Absolute(module).visit(package)
        ), module


def test_the_bundle_holds_every_model_and_no_cli() -> None:
    modules = set(bundle_modules())
    for needed in (
        "sleepify.models.hybrid.modeling_sleep_hybrid",
        "sleepify.models.ouro.modeling_ouro",
        "sleepify.models.jet_nemotron.modeling_jet_nemotron",
        "sleepify.models.scratch.modeling_scratch",
        "sleepify.generation",
        "sleepify.ops.gated_delta_rule.naive",
    ):
        assert needed in modules
    assert not {m for m in modules if m.startswith(("sleepify.cli", "sleepify.training", "sleepify.data"))}


# ------------------------------------------------------------------------- loading without sleepify

# A Python where sleepify and every optional package are absent, as in a venv with only torch, transformers
# and what they need: `python -S` (no site-packages, so no .pth files and no editable sleepify) with a
# folder of links to every site-packages entry except the blocked ones.
_BLOCKED = ("sleepify", "__editable__", "fla", "flash_attn", "flash_linear_attention", "triton", "datasets")
_BLOCKED += ("einops", "click", "pydantic")


@pytest.fixture(scope="module")
def minimal_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import site

    folder = tmp_path_factory.mktemp("minimal-site")
    site_dirs = {str(Path(d)) for d in site.getsitepackages()}
    linked: set[str] = set()  # entries already linked, and distributions (sys.path order wins)
    projects: set[str] = set()
    for site_dir in [p for p in sys.path if str(Path(p or ".")) in site_dirs]:
        for entry in Path(site_dir).iterdir():
            name = entry.name.lower().replace("-", "_")
            if name.startswith(_BLOCKED) or name.endswith(".pth") or entry.name in linked:
                continue
            if name.endswith((".dist_info", ".egg_info")):
                project = entry.name.split("-")[0].lower().replace("_", "-")
                if project in projects:
                    continue
                projects.add(project)
            linked.add(entry.name)
            (folder / entry.name).symlink_to(entry)
    return folder


_LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys

    for absent in ("sleepify", "fla", "flash_attn", "triton", "datasets"):
        assert importlib.util.find_spec(absent) is None, absent + " is importable"
    import torch
    from transformers import AutoModelForCausalLM, pipeline

    folder, ids_file, out_file, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))  # as the test process: the same reduction order, the same logits
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert not any(m.startswith("sleepify") for m in sys.modules), "sleepify was imported"
    ids = torch.tensor(json.loads(open(ids_file).read()))
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    result = {"logits": logits, "tokens": tokens, "module": type(model).__module__}
    if len(sys.argv) > 5:  # a tokenizer ships with this export: the text-generation pipeline works too
        pipe = pipeline("text-generation", model=model, tokenizer=folder)
        result["text"] = pipe("ab", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    torch.save(result, out_file)
    """
)


def _load_without_sleepify(
    folder: Path, ids: torch.Tensor, tmp: Path, site: Path, pipe: bool = False
) -> dict:
    (tmp / "ids.json").write_text(json.dumps(ids.tolist()))
    (tmp / "loader.py").write_text(_LOADER)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp / "hf-modules"), "PYTHONPATH": str(site)}
    loader = [sys.executable, "-S", str(tmp / "loader.py")]
    threads = str(torch.get_num_threads())
    args = [*loader, str(folder), str(tmp / "ids.json"), str(tmp / "out.pt"), threads]
    proc = subprocess.run(args + (["pipe"] if pipe else []), cwd=tmp, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(tmp / "out.pt", weights_only=True)


_TOKENIZER_LOADER = textwrap.dedent(
    """
    import json, sys

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = sys.argv[1]
    # trust_remote_code=False: transformers reads config.json through AutoConfig first, refuses the folder's
    # code without asking, and falls back to the plain config; the tokenizer itself needs no code
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    plain = PreTrainedTokenizerFast.from_pretrained(folder)
    ids = tok("ab ba", add_special_tokens=False).input_ids
    assert ids == plain("ab ba", add_special_tokens=False).input_ids
    ran_code = sorted(m for m in sys.modules if m.startswith("transformers_modules"))
    print(json.dumps({"ids": ids, "text": tok.decode(ids), "ran_code": ran_code}))
    """
)


def _load_tokenizer_without_code(folder: Path, tmp: Path, site: Path) -> tuple[dict, str]:
    """The export's tokenizer through AutoTokenizer with trust_remote_code=False, stdin closed (a prompt
    would show in the output); returns what it printed and the process's stderr."""
    (tmp / "tokenizer_loader.py").write_text(_TOKENIZER_LOADER)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp / "hf-modules-tok"), "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-S", str(tmp / "tokenizer_loader.py"), str(folder)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


_RESAVER = textwrap.dedent(
    """
    import importlib.util, sys

    assert importlib.util.find_spec("sleepify") is None
    from transformers import AutoModelForCausalLM

    folder = sys.argv[1]
    for out in sys.argv[2:]:  # load, save, load what was saved, save again ...
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).save_pretrained(out)
        folder = out
    """
)


def _resave(folder: Path, tmp: Path, site: Path) -> Path:
    """``folder`` loaded and re-saved twice with transformers' save_pretrained, where sleepify cannot be
    imported; returns the second copy."""
    (tmp / "resaver.py").write_text(_RESAVER)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp / "hf-modules"), "PYTHONPATH": str(site)}
    copies = [tmp / "resaved-1", tmp / "resaved-2"]
    args = [sys.executable, "-S", str(tmp / "resaver.py"), str(folder), *map(str, copies)]
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shipped = {p.name for p in folder.glob("*.py")}
    assert shipped == {p.name for p in copies[-1].glob("*.py")}  # every module of the bundle travels
    return copies[-1]


def _with_sleepify(folder: Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__module__.startswith("sleepify.")
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    return logits, tokens


def _check_export(folder: Path, tmp: Path, site: Path, vocab: int, pipe: bool = False) -> dict:
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    for entry in AUTO_MAP.values():
        assert (folder / f"{entry.split('.')[0]}.py").is_file()
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (2, 19))
    remote = _load_without_sleepify(folder, ids, tmp, site, pipe=pipe)
    assert remote["module"].startswith("transformers_modules.")
    logits, tokens = _with_sleepify(folder, ids)
    torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(remote["tokens"], tokens)
    return remote


@pytest.mark.slow
def test_converted_qwen2_export_loads_and_generates_without_sleepify(
    tmp_path: Path, minimal_site: Path
) -> None:
    convert_dir = build_tiny_run(tmp_path / "build")
    out = tmp_path / "export"
    export(convert_dir, out, log=None)
    remote = _check_export(out, tmp_path, minimal_site, vocab=100, pipe=True)
    assert remote["text"].startswith("ab") and len(remote["text"]) > 2
    tok, printed = _load_tokenizer_without_code(out, tmp_path, minimal_site)
    assert tok["text"] == "ab ba" and tok["ran_code"] == []
    assert "Do you wish to run the custom code" not in printed  # no [y/N] prompt
    resaved = _resave(out, tmp_path, minimal_site)
    again = _check_export(resaved, tmp_path, minimal_site, vocab=100)
    torch.testing.assert_close(again["logits"], remote["logits"], rtol=0, atol=0)
    # re-saved where sleepify is installed (the package's classes): the remote code is written too
    by_package = tmp_path / "by-package"
    AutoModelForCausalLM.from_pretrained(out).save_pretrained(by_package)
    _check_export(by_package, tmp_path, minimal_site, vocab=100)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["ouro-tiny", "jet-nemotron-tiny"])
def test_converted_fixture_export_loads_without_sleepify(
    fixtures_dir: Path, fixture: str, tmp_path: Path, minimal_site: Path
) -> None:
    source = fixtures_dir / fixture
    if not (source / "config.json").is_file():
        pytest.skip(f"{fixture} fixture not found")
    convert_dir = tmp_path / "convert"
    convert(str(source), out_dir=convert_dir, overrides=["sleep.window=8"], log=None)
    out = tmp_path / "export"
    export(convert_dir, out, log=None)
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    _check_export(out, tmp_path, minimal_site, vocab=vocab)
    _check_export(_resave(out, tmp_path, minimal_site), tmp_path, minimal_site, vocab=vocab)


@pytest.mark.slow
def test_builtin_scratch_export_loads_without_sleepify(tmp_path: Path, minimal_site: Path) -> None:
    convert_dir = tmp_path / "convert"
    convert("builtin:gdn-hybrid-4-tiny", out_dir=convert_dir, log=None)
    out = tmp_path / "export"
    export(convert_dir, out, log=None)
    vocab = AutoModelForCausalLM.from_pretrained(convert_dir).config.vocab_size
    _check_export(out, tmp_path, minimal_site, vocab=vocab)
    _check_export(_resave(out, tmp_path, minimal_site), tmp_path, minimal_site, vocab=vocab)
