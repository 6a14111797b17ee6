"""No import cycle between the modules of cms/, client/ and guest/.

Read with the standard library's ``ast``, not by importing: every ``import x`` and
``from x import y`` in a module counts, wherever it stands (a function-level import, or one
under ``if TYPE_CHECKING``, is still a dependency of one module on another), and
``from pkg import mod`` counts as a dependency on the module ``pkg.mod`` when there is one.
The guest's modules import each other by their bare names (they are installed side by side
in the image), so ``cms_work`` is ``guest.cms_work``. A failure names each cycle, in order.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cms", "client", "guest")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` (at `path`) imports."""
    bare = {m.split(".", 1)[1]: m for m in known if m.startswith("guest.")}

    def resolve(dotted: str) -> str | None:
        return dotted if dotted in known else bare.get(dotted)

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(r for a in node.names if (r := resolve(a.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                r = resolve(f"{base}.{a.name}") or resolve(base)
                if r:
                    found.add(r)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan's algorithm), as a path
    that ends where it starts."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [_path_through(g, group) for group in groups]


def _path_through(g: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle from the group's first module back to it, inside the group."""
    start = min(group)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(group)


def test_the_reader_finds_every_kind_of_import(tmp_path):
    pkg = tmp_path / "cms"
    (pkg / "sub").mkdir(parents=True)
    for name, text in {"__init__.py": "", "a.py": "import cms.b\n",
                       "b.py": "def f():\n    from cms.sub import c\n",
                       "sub/__init__.py": "", "sub/c.py": "from typing import TYPE_CHECKING\n"
                                                          "if TYPE_CHECKING:\n    from ..a import x\n",
                       "d.py": "from cms import sub\n"}.items():
        (pkg / name).write_text(text)
    known = {"cms": pkg / "__init__.py", "cms.a": pkg / "a.py", "cms.b": pkg / "b.py", "cms.d": pkg / "d.py",
             "cms.sub": pkg / "sub/__init__.py", "cms.sub.c": pkg / "sub/c.py"}
    g = {name: imports(name, path, known) for name, path in known.items()}
    assert g["cms.a"] == {"cms.b"} and g["cms.b"] == {"cms.sub.c"} and g["cms.sub.c"] == {"cms.a"}
    assert g["cms.d"] == {"cms.sub"}
    assert cycles(g) == [["cms.a", "cms.b", "cms.sub.c", "cms.a"]]


def test_no_import_cycle_in_cms_client_guest():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
