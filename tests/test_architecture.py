"""The package layout of the README's Architecture section: no import cycle among backtest_kit's modules.

`lint-imports` (pyproject.toml) checks the layers between packages; a cycle inside one package, or
one through the root package, escapes those contracts, so it is checked here with grimp (which
import-linter installs), TYPE_CHECKING and function-level imports included.
"""

from __future__ import annotations

import grimp


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:  # iterative Tarjan: no recursion limit to worry about
        nonlocal counter
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_among_the_library_modules() -> None:
    graph = grimp.build_graph("backtest_kit", exclude_type_checking_imports=False, cache_dir=None)
    assert _strongly_connected(graph) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    class Fake:
        modules = frozenset({"a", "b", "c"})

        @staticmethod
        def find_modules_directly_imported_by(module: str) -> set[str]:
            return {"a": {"b"}, "b": {"a", "c"}, "c": set()}[module]

    assert _strongly_connected(Fake()) == [["a", "b"]]  # type: ignore[arg-type]
