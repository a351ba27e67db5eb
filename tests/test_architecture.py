"""The floors of docs/architecture.md, checked on the source with ``ast`` (imports inside functions count).

- every import goes down a floor or stays on its own (cli -> api -> stages -> engine/training -> config and
  utilities -> models -> sleep engine -> layers -> ops -> base); only a module ``__getattr__`` (a lazy,
  deprecated alias) and the package root may reach anywhere;
- no import circle between modules;
- the modeling kernel (``ops``, ``layers``, ``models``, ``sleep``, ``generation`` and ``errors``) never
  imports a stage, the CLI, the API, training, config or the run layout, and the remote-code bundle that
  exports ship is exactly the declared kernel list (``sleepify.remote_code.KERNEL_MODULES``);
- every stage lives in ``sleepify/stages/``; only ``sleepify/runs.py`` names the run folders.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import sleepify
from sleepify import remote_code
from sleepify.remote_code import ENTRY_MODULES, KERNEL_MODULES, bundle_modules

ROOT = Path(sleepify.__file__).parent

# floor number -> module prefixes (longest prefix wins); a module may import its own floor or a lower one
FLOORS: dict[int, tuple[str, ...]] = {
    0: ("sleepify.cli", "sleepify.__main__", "sleepify.quickstart"),
    1: ("sleepify.api",),
    2: ("sleepify.stages",),
    3: (
        "sleepify.training",
        "sleepify.evaluation",
        "sleepify.data",
        "sleepify.runs",
        "sleepify.hub",
        "sleepify.weights_io",
        "sleepify.planning",
        "sleepify.memory_plan",
        "sleepify.remote_code",
        "sleepify.doctor",
    ),
    4: ("sleepify.config", "sleepify.fsutil", "sleepify.threads", "sleepify.sanity"),
    5: ("sleepify.models", "sleepify.generation"),
    6: ("sleepify.sleep",),
    7: ("sleepify.layers",),
    8: ("sleepify.ops",),
    9: ("sleepify.errors", "sleepify._moved"),
}
FLOOR_NAMES = {0: "cli", 1: "api", 2: "stages", 3: "engine/training", 4: "config/utilities", 5: "models",
               6: "sleep engine", 7: "layers", 8: "ops", 9: "base"}  # fmt: skip
# the deprecated import paths: stubs whose lazy __getattr__ forwards to the new homes
MOVED = ("convert", "export", "generation_stage", "benchmarking", "model_io", "training.stage")
KERNEL_PREFIXES = (
    "sleepify.ops",
    "sleepify.layers",
    "sleepify.models",
    "sleepify.sleep",
    "sleepify.generation",
)
KERNEL_MAY_NOT = ("sleepify.stages", "sleepify.cli", "sleepify.api", "sleepify.training", "sleepify.config",
                  "sleepify.runs", "sleepify.evaluation", "sleepify.data", "sleepify.quickstart")  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
DEPRECATED = {f"sleepify.{m}" for m in MOVED}


def _resolve(name: str) -> str | None:
    """The deepest sleepify module ``name`` names (``sleepify.x.y`` where ``y`` is a function -> ``x``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int]]:
    """Every sleepify module ``module`` imports (at any depth), outside a module-level ``__getattr__``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    lazy = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    skip = {id(x) for f in lazy for x in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "sleepify" or name.startswith("sleepify."):
                target = _resolve(name)
                if target and target != module:
                    found.append((target, node.lineno))
    return found


def floor_of(module: str) -> int | None:
    best = None
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (floor, prefix)
    return None if best is None else best[0]


def test_every_module_has_a_floor() -> None:
    missing = [m for m in MODULES if m != "sleepify" and m not in DEPRECATED and floor_of(m) is None]
    assert not missing, f"add these modules to a floor in FLOORS (and docs/architecture.md): {missing}"


def test_no_import_runs_back_up_a_floor() -> None:
    wrong = []
    for module in MODULES:
        if module == "sleepify" or module in DEPRECATED:
            continue
        here = floor_of(module)
        for target, line in _imports(module):
            if target == "sleepify" or target in DEPRECATED:
                if target in DEPRECATED:
                    wrong.append(f"{module}:{line} imports the deprecated {target}")
                continue
            there = floor_of(target)
            if there is not None and here is not None and there < here:
                up = f"({FLOOR_NAMES[there]}, a floor up)"
                wrong.append(f"{module}:{line} ({FLOOR_NAMES[here]}) imports {target} {up}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    graph = {m: sorted({t for t, _ in _imports(m) if t != "sleepify"}) for m in MODULES if m != "sleepify"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_the_kernel_imports_nothing_above_it() -> None:
    wrong = []
    for module in MODULES:
        if not module.startswith(KERNEL_PREFIXES):
            continue
        for target, line in _imports(module):
            if target.startswith(KERNEL_MAY_NOT) or target in DEPRECATED:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "the modeling kernel must stay shippable as remote code:\n" + "\n".join(wrong)


def test_the_export_bundle_is_the_declared_kernel() -> None:
    shipped = bundle_modules(ENTRY_MODULES)
    extra, missing = sorted(set(shipped) - set(KERNEL_MODULES)), sorted(set(KERNEL_MODULES) - set(shipped))
    assert shipped == sorted(KERNEL_MODULES), f"bundle vs KERNEL_MODULES: extra {extra}, missing {missing}"
    assert remote_code.kernel_modules() == sorted(KERNEL_MODULES)
    assert all(m.startswith(KERNEL_PREFIXES) or m == "sleepify.errors" for m in KERNEL_MODULES)


def test_a_stray_import_in_the_kernel_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that runs before an export: a kernel module importing a stage is refused."""
    original = remote_code._source

    def with_stray(module: str) -> Path:
        path = original(module)
        if module == "sleepify.layers.norm":
            copy = tmp_path / "norm.py"
            copy.write_text(
                path.read_text() + "\n\ndef f():\n    from sleepify.stages.eval import run_eval\n"
            )
            return copy
        return path

    monkeypatch.setattr(remote_code, "_source", with_stray)
    with pytest.raises(remote_code.RemoteCodeError, match="sleepify.stages.eval"):
        remote_code.write_remote_code(tmp_path / "out")


def test_every_stage_lives_in_stages() -> None:
    from sleepify.stages import STAGES

    for stage in STAGES:
        module = MODULES[f"sleepify.stages.{stage}"]
        tree = ast.parse(module.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert any(n.startswith("plan_") for n in names) and any(n.startswith("run_") for n in names), stage
    outside = [m for m in MODULES if re.search(r"(^|\.)(stage|.*_stage)$", m) and m not in DEPRECATED]
    assert not outside, outside


def test_only_runs_knows_the_run_layout() -> None:
    """Folder names of the run layout appear as path parts only in sleepify/runs.py."""
    pattern = re.compile(r"""(/\s*["'](model|convert|warmup|train|eval|latest)["'])""")
    wrong = []
    for module, path in MODULES.items():
        if module in ("sleepify.runs",) or module.startswith("sleepify.cli"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                wrong.append(f"{module}:{i}: {line.strip()}")
    assert not wrong, "ask sleepify.runs where a run's folders are:\n" + "\n".join(wrong)
