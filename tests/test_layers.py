"""The package's layout, read from its imports: each folder imports only the floors below it, no import circle,
no function-local import of the package's own modules outside the CLI (which loads its commands lazily), and no
private name taken from another folder. The README's layout section states the same order."""

from __future__ import annotations

import ast
import os
from collections import defaultdict

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lossgrid")

#: from the top down; a unit imports only units on lower floors (and itself). ``base`` is every module
#: at the package's root not named here (errors, config, data, models, inputs, checkpoints, ...) and the zoo.
FLOORS = (
    ("cli",),
    ("demo", "gallery"),
    ("plot",),
    ("trajectory", "evolve", "audits", "bench", "train"),
    ("surface",),
    ("hessian",),
    ("engine",),
    ("exporters",),
    ("kernels",),
    ("base",),
)
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}
#: function-local imports of the package's own modules allowed outside the CLI (heavy packages such as
#: matplotlib or plotly are imported where they are used, inside functions; the package's modules never)
LOCAL_OK: set[tuple[str, str]] = set()


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[1:2] == ["__main__"]:  # ``python -m lossgrid``: the CLI
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in FLOOR else "base"


def modules() -> dict[str, str]:
    found = {}
    root = os.path.dirname(PACKAGE)
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def imports(module: str, path: str, known: dict[str, str]) -> list[tuple[str, str, bool, int]]:
    """``(target module, imported name, inside a function, line)`` for each import of the package's own modules."""
    tree = ast.parse(open(path).read())
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    out = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            local = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                base = package[:len(package) - child.level + 1] if child.level else []
                target = ".".join(base + ([child.module] if child.module else []))
                for alias in child.names:
                    full = f"{target}.{alias.name}"
                    if full in known:  # a module imported from its package
                        out.append((full, "", local, child.lineno))
                    elif target in known:
                        out.append((target, alias.name, local, child.lineno))
            elif isinstance(child, ast.Import):
                out.extend((a.name, "", local, child.lineno) for a in child.names if a.name in known)
            visit(child, local)

    visit(tree, False)
    return out


def all_imports() -> dict[str, list[tuple[str, str, bool, int]]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_each_folder_imports_only_lower_floors():
    wrong = [f"{m}:{line} imports {t} ({unit_of(m)} may not import {unit_of(t)})"
             for m, found in all_imports().items() for t, _, _, line in found
             if unit_of(t) != unit_of(m) and FLOOR[unit_of(t)] <= FLOOR[unit_of(m)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = defaultdict(set)
    for m, found in all_imports().items():
        for t, _, _, _ in found:
            if t != m and not t.startswith(m + "."):  # a package's __init__ naming its own modules is no circle
                graph[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            circle = walk(node)
            assert circle is None, " -> ".join(circle)


def test_no_function_local_import_of_the_package_outside_the_cli():
    local = sorted({(m, t) for m, found in all_imports().items() for t, _, inside, _ in found
                    if inside and unit_of(m) != "cli" and (m, t) not in LOCAL_OK})
    assert not local, local


def test_no_private_name_from_another_folder():
    taken = [f"{m}:{line} takes {t}.{name}" for m, found in all_imports().items() for t, name, _, line in found
             if name.startswith("_") and not name.startswith("__") and unit_of(t) != unit_of(m)]
    assert not taken, "\n".join(taken)


def test_the_units_are_the_floors():
    """Every folder of the package is a unit of FLOORS or part of the base (a new folder gets its floor here)."""
    folders = {name for name in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py"))}
    assert folders - set(FLOOR) <= {"zoo"}, folders - set(FLOOR)
