"""The layers are one-way: uqa_cli -> flows -> tasks -> uqa (the library), and inside uqa/ its packages
in a fixed order, each importing only those before it. Every import statement, at module level or
inside a function, is checked; the modules' import graph has no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

LAYERS = ["uqa", "tasks", "flows", "uqa_cli"]  # each may import only those before it (and itself)
# uqa/'s packages, lowest first: each may import only those before it (and itself). errors and layout
# are modules at the top; the rest are packages whose __init__ says what they own.
PACKAGES = ["errors", "layout", "ops", "params", "data", "text", "model", "evaluation", "workspace", "registry",
            "serving"]


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in (REPO / "uqa").rglob("*.py")}


def _uqa_imports(path: Path) -> set[str]:
    """The uqa modules `path` imports (`from uqa.registry import gate` is the module uqa.registry.gate)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "uqa"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "uqa":
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            found |= subs or {node.module}
    return found - ({_module(path)} if path.is_relative_to(REPO) else set())


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = {f"{path.relative_to(REPO)} imports {sorted(_imports(path) & above)}"
             for path in (REPO / layer).rglob("*.py") if _imports(path) & above}
    assert not wrong, wrong


def test_every_module_of_uqa_is_in_a_package_of_the_order():
    assert {_package(m) for m in MODULES} - {""} == set(PACKAGES)


def test_each_package_imports_only_the_packages_below():
    wrong = []
    for module, path in MODULES.items():
        if not _package(module):
            continue
        mine = PACKAGES.index(_package(module))
        for dep in _uqa_imports(path):
            if _package(dep) and PACKAGES.index(_package(dep)) > mine:
                wrong.append(f"{module} imports {dep} (an arrow back up: {_package(dep)} is above {_package(module)})")
    assert not wrong, wrong


def test_the_modules_import_graph_has_no_circle():
    graph = {m: _uqa_imports(p) & set(MODULES) for m, p in MODULES.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                circles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not circles, circles


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from flows.pipeline import uqa_pipeline\n    import tasks.train\n")
    assert _imports(f) == {"flows", "tasks"}


def test_the_checker_sees_a_package_imported_as_a_module(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from uqa.registry import gate\n    import uqa.serving.app\n")
    assert _uqa_imports(f) == {"uqa.registry.gate", "uqa.serving.app"}


PRODUCT = ("uqa", "tasks", "flows", "uqa_cli")
MAX_MODULES_PER_FOLDER, MAX_MODULE_LINES, MAX_FUNCTION_LINES = 15, 400, 80


def test_folders_modules_and_functions_stay_small_enough_to_read():
    """A newcomer reads a folder, a module and a function in one sitting: at most 15 modules a folder,
    400 lines a module, 80 lines a function (decorators included), in the product code."""
    files = [p for layer in PRODUCT for p in (REPO / layer).rglob("*.py")]
    crowded = {str(d.relative_to(REPO)): n for d in {p.parent for p in files}
               if (n := len(list(d.glob("*.py")))) > MAX_MODULES_PER_FOLDER}
    long_modules = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    long_functions = {}
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in node.decorator_list], default=node.lineno)
                if (n := node.end_lineno - first + 1) > MAX_FUNCTION_LINES:
                    long_functions[f"{p.relative_to(REPO)}:{node.name}"] = n
    assert (crowded, long_modules, long_functions) == ({}, {}, {})
