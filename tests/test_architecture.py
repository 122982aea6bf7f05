"""The package layout is a contract: layers import downward only, no import cycles, PyTorch only in train/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "h2gnet"

#: Each package's layer; a module may import from its own layer or below, never above.
LAYERS = {
    "h2gnet": 0, "h2gnet.errors": 0, "h2gnet.conventions": 0,
    "h2gnet.io": 1,
    "h2gnet.patches": 2, "h2gnet.outputs": 2, "h2gnet.synth": 2, "h2gnet.cohort": 2,
    "h2gnet.infer": 3,
    "h2gnet.evaluation": 4,
    "h2gnet.train": 5, "h2gnet.fast": 5, "h2gnet.view": 5,
    "h2gnet.study": 6,
    "h2gnet.cli": 7, "h2gnet.__main__": 7, "h2gnet.configs": 7,
}
#: Packages that run without PyTorch (the core install).
TORCH_FREE = ("h2gnet.io", "h2gnet.cohort", "h2gnet.patches", "h2gnet.outputs", "h2gnet.synth", "h2gnet.infer",
              "h2gnet.evaluation", "h2gnet.fast", "h2gnet.study.report", "h2gnet.study.designs",
              "h2gnet.study.layout", "h2gnet.cli", "h2gnet.params", "h2gnet.train.config", "h2gnet.view")
#: Packages that must not import another of their own layer (what they read arrives as files, not as code).
APART_FROM = {"h2gnet.view": ("h2gnet.train", "h2gnet.fast", "h2gnet.study")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute module names imported by a file (``from a import b`` counts ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add its package to LAYERS")


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        _layer(name)


def test_no_module_imports_upward() -> None:
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for imported in _imports(path, top_level_only=False):
            if imported in modules and _layer(imported) > _layer(name):
                upward.append(f"{name} -> {imported}")
    assert not upward, "imports against the layers: " + ", ".join(sorted(upward))


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {n: {i for i in _imports(p, top_level_only=False) if i in modules and i != n} for n, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle of the layout
    graph = {n: {i for i in deps if not (n.startswith(i + ".") and modules[i].name == "__init__.py")}
             for n, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if nxt not in state and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for n in sorted(graph):
        if n not in state and visit(n, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_packages_kept_apart() -> None:
    offenders = [f"{name} -> {i}" for name, path in _modules().items() for package, banned in APART_FROM.items()
                 if name.startswith(package) for i in _imports(path, False) if i.startswith(banned)]
    assert not offenders, f"imports of packages kept apart: {offenders}"


def test_torch_is_imported_only_in_train() -> None:
    offenders = [name for name, path in _modules().items()
                 if not name.startswith("h2gnet.train")
                 and any(i == "torch" or i.startswith(("torch.", "torchvision")) for i in _imports(path, False))]
    assert not offenders, f"PyTorch imported outside h2gnet.train: {offenders}"


def test_the_core_imports_with_torch_blocked() -> None:
    """Every torch-free module imports in a process where ``import torch`` fails (a core-only install)."""
    names = sorted(n for n in _modules() if n.startswith(TORCH_FREE))
    assert "h2gnet.infer.segment" in names and "h2gnet.cli" in names
    code = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {names!r}:\n"
        "    importlib.import_module(m)\n"
        "from h2gnet.cli import build_parser\n"
        "build_parser().parse_args(['segment', 's.tiff', '-o', 'out', '--no-refine', '--patch-model', 'm.onnx'])\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("package", ["io", "cohort",
                                     "patches", "infer", "outputs", "train", "evaluation", "fast", "synth",
                                     "study", "view"])
def test_tests_mirror_the_packages(package: str) -> None:
    assert (SRC / package).is_dir() and (Path(__file__).parent / package).is_dir()
