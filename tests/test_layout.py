"""Layout rules that keep the package's seams honest (simple AST checks over the sources).

- Private torch APIs (``torch._ops``, ``torch.utils._pytree``, ``tensor._version``, ...) are used
  only in ``tfcompile/_torch_compat.py``, so a torch upgrade that moves them needs one change.
- Passes (``tfcompile/passes/``) know graphs: they never read private attributes (``x._name``)
  of the objects they are handed (a StageProgram, a TracedStage), only public fields and
  ``node.meta``.
- The import graph between tfcompile's modules has no cycle, counting every import: at module
  level, inside functions (lazy) and under ``TYPE_CHECKING``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfcompile"
COMPAT = PACKAGE / "_torch_compat.py"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str] | None:
    """``["torch", "_ops", "X"]`` for ``torch._ops.X``; None if not a chain of names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def private_torch_uses(tree: ast.AST) -> list[str]:
    """Every private torch name `tree` imports or reads, as ``line: text``."""
    found = []
    torch_aliases = {"torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] in ("torch", "functorch"):
                    torch_aliases.add(a.asname or parts[0])
                    if any(_private(p) for p in parts):
                        found.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] in ("torch", "functorch"):
                names = [a.name for a in node.names]
                if any(_private(p) for p in parts) or any(_private(n) for n in names):
                    found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in torch_aliases and any(_private(p) for p in chain[1:]):
                found.append(f"{node.lineno}: {'.'.join(chain)}")
            elif node.attr == "_version":
                found.append(f"{node.lineno}: ._version")
    return sorted(set(found))


def private_attribute_reads(tree: ast.AST) -> list[str]:
    """Reads of ``x._name`` where x is not ``self``/``cls`` (an object handed in from outside)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            found.append(f"{node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if p != COMPAT], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_private_torch_names_only_in_torch_compat(path):
    uses = private_torch_uses(ast.parse(path.read_text()))
    assert not uses, (
        f"{path.relative_to(PACKAGE.parent)} uses private torch APIs {uses}: add a helper to "
        "tfcompile/_torch_compat.py and call that"
    )


@pytest.mark.parametrize("path", sorted((PACKAGE / "passes").rglob("*.py")), ids=lambda p: p.name)
def test_passes_read_no_private_attributes(path):
    reads = private_attribute_reads(ast.parse(path.read_text()))
    assert not reads, (
        f"{path.relative_to(PACKAGE.parent)} reads private attributes {reads}: passes read "
        "graphs (node.meta) and public fields only"
    )


def test_the_checks_catch_what_they_look_for():
    src = (
        "import torch\nfrom torch.utils import _pytree\nfrom torch._ops import OpOverload\n"
        "x = torch._C\ny = t._version\nz = prog._saved_names\nw = self._cache\n"
    )
    tree = ast.parse(src)
    assert len(private_torch_uses(tree)) == 4
    assert private_attribute_reads(tree) == ["4: ._C", "5: ._version", "6: ._saved_names"]
    # the compat module is where they live (it must keep matching, or the check is blind)
    assert private_torch_uses(ast.parse(COMPAT.read_text()))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """tfcompile module -> the tfcompile modules it imports, wherever the import stands."""
    modules = {_module_name(p): p for p in SOURCES}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfcompile"):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("tfcompile")]
            for target in targets:
                if target in modules and target != name:
                    edges[name].add(target)
                    break
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
