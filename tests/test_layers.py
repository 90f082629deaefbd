"""The layers are one-way: uqa_cli -> flows -> tasks -> uqa (the library). Every import statement,
at module level or inside a function, is checked."""

from __future__ import annotations

import ast

import pytest
from conftest import REPO

LAYERS = ["uqa", "tasks", "flows", "uqa_cli"]  # each may import only those before it (and itself)


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = {f"{path.relative_to(REPO)} imports {sorted(_imports(path) & above)}"
             for path in (REPO / layer).rglob("*.py") if _imports(path) & above}
    assert not wrong, wrong


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from flows.pipeline import uqa_pipeline\n    import tasks.train\n")
    assert _imports(f) == {"flows", "tasks"}
