"""The package's layers: every import goes down (or within a subpackage), and no import cycle exists.

The layers, lowest first, as the README's architecture section draws them. A module may import
from its own subpackage and from lower layers only; subpackages of the same layer (estimation
and orientation) do not import each other.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "cryo_orient"

LAYERS = {
    "validation": 0,
    "artifacts": 0,
    "__init__": 0,
    "geometry": 1,
    "data": 2,
    "tomography": 3,
    "simulation": 4,
    "estimation": 5,
    "orientation": 5,
    "workflow": 6,
    "cli": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (a module file, else its package)."""
    parts = name.split(".")
    while parts:
        rel = Path(*parts[1:]) if len(parts) > 1 else Path()
        if (PACKAGE / rel).with_suffix(".py").is_file() and len(parts) > 1:
            return ".".join(parts)
        if (PACKAGE / rel / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    raise AssertionError(f"cannot resolve {name}")


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.startswith("cryo_orient")
        ):
            for alias in node.names:
                found.add(_resolve(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
        elif isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("cryo_orient")}
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path) if m != name}
    return graph


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module} is in no layer: add its subpackage to LAYERS and to the README"
    return LAYERS[top], top


def _layer_violations(graph) -> list[str]:
    bad = []
    for module, targets in graph.items():
        layer, top = _layer(module)
        for target in sorted(targets):
            target_layer, target_top = _layer(target)
            if target_top != top and not target_layer < layer and not (target_layer == layer == 0):
                bad.append(f"{module} (layer {layer}, {top}) imports {target} (layer {target_layer}, {target_top})")
    return bad


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)


def test_imports_go_down_the_layers():
    assert _layer_violations(_graph()) == [], "an import may only go to a lower layer or within its subpackage"


def test_no_import_cycles():
    assert _cycle(_graph()) is None


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = _graph()
    graph["cryo_orient.geometry.rotations"] = graph["cryo_orient.geometry.rotations"] | {
        "cryo_orient.workflow.pipeline"
    }
    assert any("geometry.rotations" in v and "workflow.pipeline" in v for v in _layer_violations(graph))
    assert _cycle(graph) is not None  # pipeline imports rotations: now a cycle
    siblings = {"cryo_orient.estimation.exact": {"cryo_orient.orientation.recovery"}}
    assert _layer_violations(siblings), "subpackages of one layer must not import each other"
