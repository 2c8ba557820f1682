"""The package's shape: rooms in data-flow order, no import circles, small files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gossipser"
# each room may import from itself and the rooms before it; errors/config serve everyone
ORDER = ("errors", "config", "data", "learn", "gossip", "sim", "privacy", "net", "ui", "cli",
         "__main__")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return isinstance(t, ast.Name) and t.id == "TYPE_CHECKING" or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(name: str) -> set[str]:
    """gossipser modules `name` imports anywhere (functions included), except under
    `if TYPE_CHECKING:`, resolved to the modules this tree holds."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


def room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_is_in_a_room_and_the_top_level_stays_small():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 4, top
    for name in MODULES:
        assert name == "gossipser" or room(name) in ORDER, name


def test_rooms_import_only_from_rooms_before_them():
    wrong = []
    for name, deps in GRAPH.items():
        if name == "gossipser":
            continue
        rank = ORDER.index(room(name))
        wrong += [f"{name} -> {d}" for d in deps
                  if d != "gossipser" and ORDER.index(room(d)) > rank]
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_no_import_circles():
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := dfs(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := dfs(name)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_each_room_says_what_it_holds():
    for r in ORDER[2:-1]:
        doc = ast.get_docstring(ast.parse((PKG / r / "__init__.py").read_text()))
        assert doc and doc.startswith(f"{r}:"), r


@pytest.mark.parametrize("folder", ["gossipser", "scripts"])
def test_no_file_is_over_the_size_limit(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_circle_and_a_wrong_direction(tmp_path):
    """The graph walk above would catch what it is for: fed a made-up tree, it reports."""
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = {"gossipser.data.a": {"gossipser.data.b"}, "gossipser.data.b": {"gossipser.data.a"}}
        with pytest.raises(pytest.fail.Exception, match="import circle"):
            test_no_import_circles()
        GRAPH = {"gossipser.data.a": {"gossipser.net.b"}, "gossipser.net.b": set()}
        with pytest.raises(AssertionError, match="data.a -> gossipser.net.b"):
            test_rooms_import_only_from_rooms_before_them()
    finally:
        GRAPH = saved
