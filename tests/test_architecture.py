"""The package's shape, checked: its import graph, the probe's layer order, module size, references.

- No circles. A circle kept loadable by a function-local import is still a circle (the two modules
  cannot be understood or tested apart), so imports inside functions count; only ``if TYPE_CHECKING:``
  blocks do not, since they never run.
- No module imports another package's private (``_name``) module: siblings share public modules.
- A function-local import is allowed where it buys start-up time (torch, matplotlib, an optional
  backend), and then says so in a comment on its line or the line above.
- ``epcache.probe`` in one order: a lower layer never imports a higher one (see ``PROBE_ORDER``).
- Docstrings cite documents that are in the repository and name features, not issue numbers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "epcache"
MAX_LINES = 400  # a module longer than this holds more than one job: split it by concept
# epcache.probe's layers, lowest first; a module imports only from its own layer or lower ones. ``rundir``
# (the run directory's lock and leftovers) is file-system policy below everything; results (row format,
# metrics, ranking) sits below the sweep because the trainer writes rows as it goes.
PROBE_ORDER = ("names rundir", "heads", "config", "device", "data", "results", "sweep", "solvers", "dense", "plan",
               "train", "run")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module (the longest prefix that is a module of the package)
    line: int
    local: bool  # inside a function
    commented: bool  # a comment on the import's lines or the line above


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mods: dict[str, Path]) -> list[Import]:
    found = []
    for module, path in mods.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    name = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    name = node.module or ""
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            targets = [t for t in targets if t == "epcache" or t.startswith("epcache.")]
            local = type_only = False
            up = parents.get(node)
            while up is not None:
                if isinstance(up, ast.If) and "TYPE_CHECKING" in ast.unparse(up.test):
                    type_only = True
                if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    local = True
                up = parents.get(up)
            if type_only:
                continue
            span = lines[node.lineno - 2 if node.lineno > 1 else 0 : node.end_lineno or node.lineno]
            commented = any("#" in s for s in span)
            for t in targets:
                found.append(Import(module, _resolve(t, mods) or t, node.lineno, local, commented))
    return found


def _cycles(mods: dict[str, Path], imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for imp in imports:
        if imp.target in mods and imp.target != imp.source:
            edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    for root in sorted(mods):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    mods = _modules()
    return mods, _imports(mods)


def test_no_import_cycles(graph) -> None:
    mods, imports = graph
    assert _cycles(mods, imports) == []


def test_no_import_of_another_packages_private_module(graph) -> None:
    _, imports = graph
    bad = []
    for imp in imports:
        parts = imp.target.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])  # the package the private module belongs to
                if not (imp.source == owner or imp.source.startswith(owner + ".")):
                    bad.append(f"{imp.source}:{imp.line} imports {imp.target}")
                break
    assert bad == []


def test_function_local_imports_say_why(graph) -> None:
    _, imports = graph
    bare = sorted({f"{i.source}:{i.line}" for i in imports if i.local and not i.commented})
    assert bare == []


def test_the_walk_sees_a_cycle_and_a_private_import() -> None:
    """The checks above must be able to fail: a synthetic package with both faults."""
    mods = {"epcache.a": PACKAGE / "x.py", "epcache.b": PACKAGE / "y.py"}
    imports = [Import("epcache.a", "epcache.b", 1, False, False), Import("epcache.b", "epcache.a", 3, True, True)]
    assert _cycles(mods, imports) == [["epcache.a", "epcache.b"]]


def _probe_layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "probe":
        return None
    return next((i for i, names in enumerate(PROBE_ORDER) if parts[2] in names.split()), None)


def test_probe_packages_import_in_one_order(graph) -> None:
    mods, imports = graph
    probe = {m.split(".")[2] for m in mods if m.startswith("epcache.probe.")}
    assert {p for p in probe if _probe_layer(f"epcache.probe.{p}") is None} == set()  # every part has a place
    upward = sorted({f"{i.source} -> {i.target}" for i in imports
                     if (a := _probe_layer(i.source)) is not None and (b := _probe_layer(i.target)) is not None
                     and b > a})
    assert upward == []


def test_no_module_over_the_size_limit(graph) -> None:
    mods, _ = graph
    long = {m: n for m, p in mods.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_docstrings_cite_documents_in_the_repository() -> None:
    cited, numbered = set(), []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        text = path.read_text()
        cited |= {(path.name, m) for m in re.findall(r"(?<![\w/.])((?:docs/)?[A-Z][A-Z_]+\.md)", text)}
        numbered += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"\b[Ii]ssue ?#?\d+", text)]
    missing = sorted(f"{name}: {doc}" for name, doc in cited if not (ROOT / doc).is_file())
    assert missing == []
    assert numbered == []
    assert {doc for _, doc in cited} >= {"docs/EP_SPEC.md", "docs/PROBE_FAMILIES.md"}  # the walk sees citations


TORCH_FREE = ("epcache.probe.names", "epcache.probe.heads.spec", "epcache.probe.config", "epcache.store.layout")


def _imported_at_load(path: Path) -> set[str]:
    """Top-level packages a module imports when it loads (not inside functions or ``TYPE_CHECKING``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_vocabulary_modules_need_no_torch(graph) -> None:
    """Specs, configs and the store format are plain data: loading them (and what they import) loads no torch.

    Package ``__init__`` files above them are left out: they gather a package's face, not its layers.
    """
    mods, imports = graph
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    roots = [m for m in mods if m.startswith(TORCH_FREE) and mods[m].name != "__init__.py"]
    assert "epcache.probe.heads.spec" in roots
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen or mods[m].name == "__init__.py":
            continue
        seen.add(m)
        todo += [t for t in edges.get(m, ()) if t in mods]
    assert sorted(m for m in seen if "torch" in _imported_at_load(mods[m])) == []


def test_the_readme_and_the_format_spec_name_files_that_exist() -> None:
    """A renamed module must not leave the documents pointing at its old path."""
    named = set()
    for doc in ("README.md", "cache_layout.md", "docs/README.md"):
        named |= {(doc, p) for p in re.findall(r"\b((?:epcache|tests|bench)/[\w/]+\.py)\b", (ROOT / doc).read_text())}
    assert len(named) > 10  # the documents do name files
    assert sorted(f"{doc}: {p}" for doc, p in named if not (ROOT / p).is_file()) == []
