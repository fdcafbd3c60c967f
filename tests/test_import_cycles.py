"""No import cycle between the project's modules (issue 21): every `import` and `from ... import` under tricks/,
recipes/ and bench/, those inside functions included, read with `ast` (nothing is imported to check).

An edge goes to the most specific project module an import names: `from tricks.models.registry import MODELS` is an
edge to tricks.models.registry, `from tricks.models import cifar_resnet` one to the submodule, `from tricks.models
import MODELS` one to the package tricks.models (its __init__). A package's __init__ importing its submodules is an
edge like any other; the parent packages Python initialises on the way to a submodule are not edges (as pylint's
cyclic-import counts them).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tricks", "recipes", "bench")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of `name` that is a project module."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _base(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports anywhere in its file."""
    found = set()
    for node in ast.walk(ast.parse(modules[module].read_text(), str(modules[module]))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node, modules)
            found.update(_resolve(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, modules)
                         for alias in node.names)
    return found - {None, module}


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    return {m: imports_of(m, modules) for m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_the_modules_in_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_imports_inside_functions_package_inits_and_relative_imports(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg import family  # registers\nfrom pkg.registry import REG\n",
        "pkg/registry.py": "import json\nREG = {}\n",
        "pkg/family.py": "from .registry import REG\n\ndef build():\n    from pkg import REG\n    import other.cli\n",
        "other/__init__.py": "",
        "other/cli.py": "import pkg.registry as r\nfrom other import cli\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("pkg", "other"))
    assert graph == {"pkg": {"pkg.family", "pkg.registry"}, "pkg.registry": set(),
                     "pkg.family": {"pkg.registry", "pkg", "other.cli"}, "other": set(), "other.cli": {"pkg.registry"}}
    assert cycles(graph) == [["pkg", "pkg.family"]]  # the function's `from pkg import REG` imports the package back


def test_no_import_cycle_between_project_modules():
    assert cycles(import_graph()) == []
