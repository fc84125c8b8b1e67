"""The layering of docs/design.md's map, read from the imports of every module (static, no import):
which package part may import which, and no import circles between modules."""
from __future__ import annotations

import ast
import os

import odysseus_kernels

ROOT = os.path.dirname(os.path.abspath(odysseus_kernels.__file__))
PKG = "odysseus_kernels"

# part -> the parts it may import (besides itself). A part is the first component below the package
# ("ops", "comm", ...) or a top-level module ("_util", "extension", ...).
ALLOWED = {
    "_util": set(), "_host": set(), "_extension_loader": {"_C", "_util"},
    "extension": {"_extension_loader", "_C", "kernels"},  # the public face: loads and registers the wrappers
    "comm": {"_util"},
    "kernels": {"_extension_loader", "_util"},
    "ops": {"kernels", "comm", "extension", "_host", "_util", "_extension_loader"},
    "models": {"ops", "comm", "kernels", "_util"},
    "layers": {"ops", "comm", "models", "kernels", "_util"},
    "integrations": {"ops", "comm", "layers", "models", "kernels", "_util"},
    "costmodel": {"ops", "models", "_util"},
    "playground": {"__init__", "ops", "comm", "layers", "models", "costmodel", "kernels", "_util"},  # the top
    "__init__": None,  # the package face re-exports everything
    "__main__": None,
}


def _modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield (PKG + "." + rel).removesuffix(".__init__"), path, f == "__init__.py"


def _imports(mod: str, path: str, is_pkg: bool) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(PKG)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(PKG):
                if target != PKG:  # ``from . import x`` at the top needs nothing of the package face
                    out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}
    return out


def _part(mod: str) -> str:
    parts = mod.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_part_imports_only_the_layers_below_it():
    bad = []
    for mod, path, is_pkg in _modules():
        part = _part(mod)
        allowed = ALLOWED.get(part, "missing")
        assert allowed != "missing", f"{mod}: part {part!r} is not in the map (docs/design.md)"
        if allowed is None:
            continue
        for imp in _imports(mod, path, is_pkg):
            other = _part(imp)
            if other != part and other not in allowed:
                bad.append(f"{mod} imports {imp} ({part} -> {other})")
    assert not bad, "imports against the layering of docs/design.md:\n" + "\n".join(sorted(set(bad)))


def test_no_import_circles_between_modules():
    mods = {m: (p, k) for m, p, k in _modules()}
    graph = {}
    for m, (p, k) in mods.items():
        # an import of a name from a package resolves to the submodule when one exists, else the package
        graph[m] = {i for i in _imports(m, p, k) if i in mods and i != m and not (k and i.startswith(m + "."))}
        graph[m] |= {i.rsplit(".", 1)[0] for i in _imports(m, p, k)
                     if i not in mods and i.rsplit(".", 1)[0] in mods and i.rsplit(".", 1)[0] != m
                     and not mods[i.rsplit(".", 1)[0]][1]}
    # packages' __init__ re-export their children: edges into a package are not circles of their own
    graph = {m: {i for i in e if not mods[i][1]} for m, e in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
