"""Fails when the modules of a crate import each other in a loop.

A module imports another when it names it (or something in it) by a path: `use crate::…`,
`use super::…`, `use self::…`, or a `crate::…` path in code. `mod x;` declarations are not
imports, and a crate root's `pub use` re-exports are (a module that takes a name through the
root depends on the root). Test modules (`#[cfg(test)] mod …` to the end of a file) are left
out: they may look at anything. Usage: module_cycles.py <workspace dir>
"""

import re
import sys
from pathlib import Path

USE = re.compile(r"\buse\s+((?:crate|super|self)\b[^;]*);", re.S)
PATH = re.compile(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)")
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
COMMENT = re.compile(r"//[^\n]*")


def expand(tree):
    """`crate::{a::{b, c}, d}` -> ["crate::a::b", "crate::a::c", "crate::d"]."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [re.sub(r"\bas\w+$", "", tree)] if tree else []
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rindex("}")]
    parts, depth, start = [], 0, 0
    for i, c in enumerate(inner):
        depth += c == "{"
        depth -= c == "}"
        if c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    paths = []
    for part in filter(None, parts):
        for path in expand(part):
            paths.append(prefix + path if path != "self" else prefix.rstrip(":"))
    return paths


class Crate:
    def __init__(self, root_file):
        self.root_file = root_file
        self.src = root_file.parent
        self.modules = {}  # module path (tuple) -> file
        self.collect((), root_file)

    def collect(self, module, file):
        self.modules[module] = file
        text = file.read_text()
        # Where a module's children live: next to a root or mod.rs, else in a folder of its name.
        if file == self.root_file or file.name == "mod.rs":
            folder = file.parent
        else:
            folder = file.parent / file.stem
        for name in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            for child in (folder / f"{name}.rs", folder / name / "mod.rs"):
                if child.exists():
                    self.collect(module + (name,), child)
                    break

    def resolve(self, module, path):
        """The deepest module of this crate a path from `module` names."""
        segments = path.split("::")
        if segments[0] == "crate":
            base, rest = (), segments[1:]
        elif segments[0] == "self":
            base, rest = module, segments[1:]
        else:
            base = module
            while segments and segments[0] == "super":
                base, segments = base[:-1], segments[1:]
            rest = segments
        target = base
        for segment in rest:
            if target + (segment,) in self.modules:
                target = target + (segment,)
            else:
                break
        return target

    def edges(self):
        graph = {}
        for module, file in self.modules.items():
            text = COMMENT.sub("", file.read_text())
            test = TEST_MODULE.search(text)
            if test:
                text = text[: test.start()]
            paths = [p for tree in USE.findall(text) for p in expand(tree)]
            paths += PATH.findall(USE.sub("", text))
            targets = {self.resolve(module, p) for p in paths}
            graph[module] = targets - {module}
        return graph


def circles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def name(module):
    return "crate::" + "::".join(module) if module else "crate"


def main():
    workspace = Path(sys.argv[1])
    roots = sorted(
        p
        for pattern in ("**/src/lib.rs", "**/src/main.rs", "**/src/bin/*.rs")
        for p in workspace.glob(pattern)
        if "target" not in p.parts and ".git" not in p.parts
    )
    failed = False
    modules = 0
    for root in roots:
        crate = Crate(root)
        graph = crate.edges()
        modules += len(graph)
        for component in circles(graph):
            failed = True
            members = set(component)
            print(f"import circle in {root.relative_to(workspace)}:")
            for module in sorted(component):
                for target in sorted(graph[module] & members):
                    print(f"  {name(module)} ({crate.modules[module].relative_to(workspace)}) -> {name(target)}")
    if failed:
        sys.exit(1)
    print(f"{len(roots)} crate roots, {modules} modules: no import circle")


if __name__ == "__main__":
    main()
