"""Import circles in the Rust core (src/) and the Python package: fails on a new one.

A circle is a set of files that import each other, directly or through others (a strongly
connected component of the import graph with more than one file). Rust edges come from paths
that name a module of the crate: ``crate::a::b``, ``super::x``, ``self::x`` and a child module
used by its bare name (``redis::RedisStore`` in ``store/mod.rs``), in ``use`` lines and in code;
each path goes to the file of the longest module it names, except a path to one of the file's
own ancestors (a child may always use its parent: ``super::helper`` is no edge). Python edges
come from relative imports (``from ._client import``, ``from . import _native``), those under
``TYPE_CHECKING`` included.

Circles let in for a while are listed in ``KNOWN`` (none today). The check fails when a circle
is not within a known one, so no new circle, and no new file in an old one, gets in unnoticed;
it says when a known circle is gone, so that the list can shrink.

    python scripts/import_circles.py          # exit 1 on a new circle
    python scripts/import_circles.py --all    # print every circle found
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Circles still open: none. The four of the structure review are gone: store/wait/backoff/redis
# (MIN_POLL lives in backoff.rs, TaskSlot in a leaf module), the nine files of src/python
# (PyLeaseInfo in a leaf module, Twins holding `Weak<dyn Close>`), _client.py/_lease.py (a
# Protocol instead of the type) and lease.rs/renewal.rs (the lease names its scheduler by the
# `Renewer` trait). A circle that must be let in for a while is listed here, with its reason.
KNOWN: list[frozenset[str]] = []

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PATH = re.compile(rf"\b((?:crate|super|self|{IDENT})(?:::{IDENT})+)")
MOD_DECL = re.compile(rf"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+({IDENT})\s*;", re.M)
LINE_COMMENT = re.compile(r"//[^\n]*")
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def rust_modules(src: Path) -> dict[tuple[str, ...], Path]:
    """Module path (``("store", "redis")``) -> its file, for every module file under ``src``."""
    modules: dict[tuple[str, ...], Path] = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("mod", "lib"):
            parts.pop()
        modules[tuple(parts)] = f
    return modules


def rust_edges(src: Path) -> dict[Path, set[Path]]:
    modules = rust_modules(src)
    edges: dict[Path, set[Path]] = {}
    for path, f in modules.items():
        text = STRING.sub('""', LINE_COMMENT.sub("", f.read_text()))
        children = set(MOD_DECL.findall(text))
        targets: set[Path] = set()
        for m in PATH.finditer(text):
            segs = m.group(1).split("::")
            if segs[0] == "crate":
                base: list[str] = []
                segs = segs[1:]
            elif segs[0] in ("super", "self"):
                base = list(path)
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super" and base:
                        base.pop()
                    segs = segs[1:]
            elif segs[0] in children:
                base = list(path)
            else:
                continue  # another crate, or a type's associated item
            full = base + segs
            # The longest module the path names (the rest are items in it).
            for n in range(len(full), -1, -1):
                target = modules.get(tuple(full[:n]))
                if target is not None:
                    break
            # A module may always use its ancestors (their items are its context, as Rust's
            # privacy has it): a child's `super::x` is not an edge. The crate root (lib.rs)
            # only declares modules.
            named = tuple(full[:n])
            if target is None or target == f or named == path[: len(named)]:
                continue
            targets.add(target)
        edges[f] = targets
    return edges


PY_FROM = re.compile(
    rf"^\s*from\s+(\.+)({IDENT}(?:\.{IDENT})*)?\s+import\s+([^\n(]+|\([^)]*\))", re.M
)


def python_edges(package: Path) -> dict[Path, set[Path]]:
    edges: dict[Path, set[Path]] = {}
    files = {p.stem: p for p in package.glob("*.py")}
    for f in package.glob("*.py"):
        targets: set[Path] = set()
        for dots, module, names in PY_FROM.findall(f.read_text()):
            if len(dots) != 1:
                continue
            if module:
                t = files.get(module.split(".")[0])
                if t is not None and t != f:
                    targets.add(t)
            else:  # from . import a, b
                for name in re.split(r"[\s,()]+", names):
                    t = files.get(name.split(" as ")[0].strip())
                    if t is not None and t != f:
                        targets.add(t)
        edges[f] = targets
    return edges


def circles(edges: dict[Path, set[Path]]) -> list[frozenset[Path]]:
    """Strongly connected components of more than one file (Tarjan's algorithm)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[frozenset[Path]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="print every circle found")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    args = parser.parse_args()
    root: Path = args.root.resolve()
    sys.setrecursionlimit(10_000)
    edges = rust_edges(root / "src")
    package = root / "python" / "distributed_leasing"
    if package.is_dir():
        edges.update(python_edges(package))
    found = [frozenset(str(p.relative_to(root)) for p in c) for c in circles(edges)]
    new = [c for c in found if not any(c <= k for k in KNOWN)]
    gone = [k for k in KNOWN if not any(c & k for c in found)]
    for c in found if args.all else new:
        label = "NEW circle" if c in new else "known circle"
        print(f"{label} of {len(c)} files: {', '.join(sorted(c))}")
    for k in gone:
        print(f"a known circle is gone (remove it from KNOWN): {', '.join(sorted(k))}")
    if new:
        print(
            "Import circles must not grow (issue 23): move what the files share into a module "
            "that neither imports, or pass it in as a parameter."
        )
        return 1
    print(f"import circles: {len(found)} ({len(KNOWN)} known and let in)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
