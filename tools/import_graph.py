"""Print the import graph of the ppcls package and its import cycles.

    python tools/import_graph.py [--package ppcls] [--cycles_only]

Every `import` and `from ... import` of a ppcls module counts, wherever it is written: at
the top of a module, or inside a function or method (a lazy import still ties the two
modules together, and the cycle is there the first time the function runs). An edge goes
to each module named: `import ppcls.weights.download` is an edge to ppcls.weights.download;
`from ppcls.weights import download` is one to ppcls.weights (its `__init__` runs and is
asked for the name) and one to ppcls.weights.download. The parent packages Python imports
on the way are not counted otherwise (each package that imports its own modules would be
a cycle with them). Modules are read as text (nothing is imported), so the tool runs
without Paddle.

Output: one line per module, `module -> imports` (a `*` marks an import inside a function),
then each cycle: the modules of one strongly connected component and one loop through
them. Exit code 0 without cycles, 1 with.
"""

import argparse
import ast
import os
import sys
from typing import Dict, NamedTuple

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from ppcls.utils.cli import run  # noqa: E402


class Edge(NamedTuple):
    target: str
    lazy: bool  # written inside a function or method


def module_files(package, root=ROOT):
    """Module name -> file, for every .py file under the package's folder."""
    files = {}
    base = os.path.join(root, *package.split("."))
    for folder, _, names in os.walk(base):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _function_nodes(tree):
    """The ids of nodes written inside a function or method."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    return inside


def _absolute(module, node, is_package):
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module, path, known):
    """The Edges from `module` to the modules in `known`."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    inside = _function_nodes(tree)
    is_package = os.path.basename(path) == "__init__.py"
    edges = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            targets.append(source)  # its __init__ runs and is asked for the names
            targets += [f"{source}.{alias.name}" for alias in node.names]
        for target in targets:
            if target in known and target != module:
                lazy = id(node) in inside
                edges[target] = Edge(target, edges[target].lazy and lazy if target in edges
                                     else lazy)
    return sorted(edges.values())


def import_graph(package="ppcls", root=ROOT) -> Dict[str, list]:
    """Module -> its Edges to other modules of `package`."""
    files = module_files(package, root)
    return {module: imports_of(module, path, files) for module, path in sorted(files.items())}


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan), each sorted,
    as a sorted list of tuples."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(start):
        # iterative Tarjan: (node, iterator over its successors)
        work = [(start, iter(e.target for e in graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(e.target for e in graph[succ])))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(tuple(sorted(component)))

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(found)


def loop_through(graph, component):
    """One shortest closed path through a cycle's modules, from and back to its first."""
    members = set(component)
    start = component[0]
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return list(reversed(path)) + [start]
                if edge.target in members and edge.target not in previous:
                    previous[edge.target] = node
                    following.append(edge.target)
        frontier = following
    return list(component)


def format_graph(graph):
    lines = []
    for module, edges in graph.items():
        names = ", ".join(e.target + ("*" if e.lazy else "") for e in edges)
        lines.append(f"{module} -> {names}" if names else module)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="ppcls")
    parser.add_argument("--cycles_only", action="store_true")
    args = parser.parse_args(argv)
    graph = import_graph(args.package)
    if not args.cycles_only:
        print("\n".join(format_graph(graph)))
        print(f"\n{len(graph)} modules, {sum(len(e) for e in graph.values())} imports "
              "(* inside a function)")
    found = cycles(graph)
    for component in found:
        print(f"cycle of {len(component)} modules: {', '.join(component)}")
        print("  e.g. " + " -> ".join(loop_through(graph, component)))
    if not found:
        print("no import cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
