"""Fails when the modules of a crate import each other in a loop.

A module imports another when it names it, or something defined in it, by a path: `use crate::…`,
`use super::…`, `use self::…`, `use child::…`, or such a path in code. A name taken through a
re-export (`pub use inner::Name`, `pub use inner::*`) counts as an import of the module that
defines it; the re-export itself is no import, nor is a `mod x;` declaration. Test modules
(`#[cfg(test)] mod …` to the end of a file) are left out: they may look at anything.

Usage: module_cycles.py <workspace dir>
"""

import re
import sys
from pathlib import Path

USE = re.compile(r"(?<![\w:])(pub(?:\s*\([^)]*\))?\s+)?use\s+([^;]*);", re.S)
PATH = re.compile(r"(?<![\w:])(\w+(?:::\w+)+)")
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
COMMENT = re.compile(r"//[^\n]*")
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)


def expand(tree):
    """`crate::{a::{b, c as d}, e}` -> [("crate::a::b", "b"), ("crate::a::c", "d"), ("crate::e", "e")]."""
    tree = re.sub(r"\s+as\s+(\w+)", r"@\1", tree.strip())
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        if not tree:
            return []
        path, _, alias = tree.partition("@")
        return [(path, alias or path.split("::")[-1])]
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
        for path, alias in expand(part):
            if path == "self":
                whole = prefix.rstrip(":")
                paths.append((whole, alias if alias != "self" else whole.split("::")[-1]))
            else:
                paths.append((prefix + path, alias))
    return paths


def source(file):
    """The file's code without comments, strings and test modules."""
    text = STRING.sub('""', COMMENT.sub("", file.read_text()))
    test = TEST_MODULE.search(text)
    return text[: test.start()] if test else text


class Crate:
    def __init__(self, root_file):
        self.root_file = root_file
        self.modules = {}  # module path (tuple) -> file
        self.code = {}  # module path -> its source, cleaned
        self.collect((), root_file)
        # Per module: names it re-exports (name -> path), and the paths it re-exports whole.
        self.aliases, self.globs, self.uses = {}, {}, {}
        for module, text in self.code.items():
            aliases, globs, uses = {}, [], []
            for visibility, tree in USE.findall(text):
                for path, alias in expand(tree):
                    if not visibility:
                        uses.append(path)
                    elif alias == "*":
                        globs.append(path[: -len("::*")])
                    else:
                        aliases[alias] = path
            self.aliases[module], self.globs[module], self.uses[module] = aliases, globs, uses

    def collect(self, module, file):
        self.modules[module] = file
        self.code[module] = source(file)
        # Where a module's children live: next to a root or mod.rs, else in a folder of its name.
        if file == self.root_file or file.name == "mod.rs":
            folder = file.parent
        else:
            folder = file.parent / file.stem
        for name in MOD.findall(self.code[module]):
            for child in (folder / f"{name}.rs", folder / name / "mod.rs"):
                if child.exists():
                    self.collect(module + (name,), child)
                    break

    def defines(self, module, name):
        pattern = rf"\b(?:struct|enum|union|trait|type|fn|const|static|macro_rules!)\s+{name}\b"
        return re.search(pattern, self.code[module]) is not None

    def resolve(self, module, path, depth=0):
        """The module of this crate that defines what a path from `module` names (None: another
        crate's)."""
        segments = path.split("::")
        if segments[-1] == "*":
            segments = segments[:-1]
        if segments[0] not in ("crate", "self", "super"):
            if module + (segments[0],) not in self.modules:
                return None
            segments = ["self"] + segments
        if segments[0] == "crate":
            target, rest = (), segments[1:]
        elif segments[0] == "self":
            target, rest = module, segments[1:]
        else:
            target = module
            while segments and segments[0] == "super":
                target, segments = target[:-1], segments[1:]
            rest = segments
        for i, segment in enumerate(rest):
            if target + (segment,) in self.modules:
                target = target + (segment,)
                continue
            if depth > 10 or self.defines(target, segment):
                return target
            # Re-exported here: the import is of wherever it comes from.
            if segment in self.aliases[target]:
                through = self.aliases[target][segment]
                remainder = "::".join([through] + rest[i + 1 :])
                return self.resolve(target, remainder, depth + 1)
            for glob in self.globs[target]:
                origin = self.resolve(target, glob, depth + 1)
                if origin is not None and (
                    self.defines(origin, segment) or segment in self.aliases[origin]
                ):
                    return self.resolve(origin, "self::" + segment, depth + 1)
            return target
        return target

    def edges(self):
        graph = {}
        for module, text in self.code.items():
            paths = list(self.uses[module])
            paths += PATH.findall(USE.sub("", text))
            targets = {self.resolve(module, p) for p in paths} - {None}
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
                file = crate.modules[module].relative_to(workspace)
                for target in sorted(graph[module] & members):
                    print(f"  {name(module)} ({file}) -> {name(target)}")
    if failed:
        sys.exit(1)
    print(f"{len(roots)} crate roots, {modules} modules: no import circle")


if __name__ == "__main__":
    main()
