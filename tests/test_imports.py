"""No import cycles in the package: every `import` statement counts, at module level or inside a function
(those run later, but a cycle through them still ties the modules' floors together); only imports under
`if TYPE_CHECKING:` are left out, since they never run."""

import ast

from conftest import REPO

PACKAGE = REPO / "mmap_ray"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.with_suffix("").relative_to(REPO).parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def _imports(tree: ast.Module):
    """Import nodes of a module, not counting those under `if TYPE_CHECKING:`."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (a submodule's import also runs its packages' __init__; the
    top-level `mmap_ray/__init__`, which every import runs, is left out: it only re-exports the core API)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for name, (path, tree) in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _imports(tree):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                found = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            else:
                found = [a.name for a in node.names]
            for t in found:
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # the module and the packages above it
                    up = ".".join(parts[:i])
                    if up in modules and up != name and not name.startswith(up + "."):
                        graph[name].add(up)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "mmap_ray.study.rows" in graph["mmap_ray.study.callback"]  # the graph is real
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_report_sits_on_results_storage_and_stats_only():
    """`report/` only reads Parquet: it must not pull in the training stack."""
    graph = import_graph()
    below, todo = set(), [m for m in graph if m.startswith("mmap_ray.report")]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in below:
                below.add(dep)
                todo.append(dep)
    training = {"mmap_ray.engine", "mmap_ray.model", "mmap_ray.distributed", "mmap_ray.checkpoint"}
    assert not below & training, sorted(below & training)
