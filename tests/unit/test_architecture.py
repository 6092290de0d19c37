"""The layering rule of docs/ARCHITECTURE.md, checked on the source (no import is executed).

Layers, lowest first: engine < store < families < workflows < figures < cli < pages.
``bench`` may import anything below ``cli``; the package root ``entk_core/__init__.py``
(the public API facade) anything below ``cli``. A module may import its own layer and
the layers below, never above; there is no import cycle (function-level imports count:
they only hide a cycle); no module imports a private name (``_x``) of another module,
except from a shared private module (one whose own name starts with ``_``); and no
family name is compared as a string outside its own family package.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LAYERS = ["engine", "store", "families", "workflows", "figures", "bench", "cli", "pages"]
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["api"] = RANK["bench"]  # entk_core/__init__.py: the public facade
# bench sits below cli (cli wires the bench command) and may use every library layer.

BUILTIN_FAMILIES = {"modadd-mlp", "tms", "modadd-transformer"}

# Known violations owned by another engineer, to be removed by them. The test fails
# when an entry no longer occurs, so the list can only shrink: delete the line when you
# fix it. (engine: issue 11 / the engine-internal items of issue 10; pages: issue 14.)
PENDING: set[tuple[str, str]] = set()
"""Known violations owned by another issue (none left: the list can only shrink)."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


PAGE_DIRS = ("pages", "app_pages")
"""Folders of Streamlit pages (the pages layer, with app.py)."""


def _sources() -> dict[str, Path]:
    files = sorted((REPO / "entk_core").rglob("*.py"))
    for d in PAGE_DIRS:
        files += sorted((REPO / d).glob("*.py"))
    files += [REPO / "app.py"] if (REPO / "app.py").exists() else []
    return {_module_name(p): p for p in files if "__pycache__" not in p.parts}


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    if parts[0] in PAGE_DIRS or parts[0] == "app":
        return "pages"
    if parts[0] != "entk_core":
        return None
    if len(parts) == 1:
        return "api"
    if parts[1] == "__main__":
        return "cli"
    return parts[1] if parts[1] in RANK else None


def _resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_pkg else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(sources: dict[str, Path]):
    """``(importer, imported module, imported names)`` for every import statement."""
    out = []
    for mod, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    out.append((mod, a.name, []))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                names = [a.name for a in node.names]
                # `from pkg import sub` where sub is a module file: an edge to the submodule
                subs = [n for n in names if f"{target}.{n}" in sources]
                for n in subs:
                    out.append((mod, f"{target}.{n}", []))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    out.append((mod, target, rest))
    return out


def _internal(target: str, sources: dict[str, Path]) -> str | None:
    """The project module an import names (the longest known prefix), if any."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in sources:
            return cand
    return None


def _is_family_name(node: ast.AST) -> bool:
    """``<...>.family.name`` (a run's family name)."""
    return (isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(node.value, ast.Attribute)
            and node.value.attr == "family")


def _violations() -> set[tuple[str, str]]:
    sources = _sources()
    found: set[tuple[str, str]] = set()
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for importer, target, names in _edges(sources):
        dst = _internal(target, sources)
        if dst is None or dst == importer:
            continue
        graph[importer].add(dst)
        lo, hi = _layer(importer), _layer(dst)
        if lo is not None and hi is not None and RANK[hi] > RANK[lo]:
            found.add(("upward", f"{importer} ({lo}) imports {dst} ({hi})"))
        if not dst.split(".")[-1].startswith("_"):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    found.add(("private", f"{importer} imports {n} from {dst}"))
    # cycles: every strongly connected component with more than one module (Tarjan)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comp.sort()
                found.add(("cycle", " -> ".join(comp + [comp[0]])))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    # family names compared as strings outside their own package
    for mod, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = mod.split(".")[2] if mod.startswith("entk_core.families.") and len(mod.split(".")) > 2 else None
        own_name = own.replace("_", "-") if own else None
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names = [_is_family_name(x) for x in sides]
            # `run.family.name == "tms"` / `== FAMILY`; comparing two runs' families is fine
            if own is None and any(names) and not all(names):
                found.add(("family-name", f"{path.relative_to(REPO)} compares a family name"))
            for side in sides:
                if isinstance(side, ast.Constant) and side.value in BUILTIN_FAMILIES and side.value != own_name:
                    found.add(("family-name", f"{path.relative_to(REPO)} compares a family name"))
    return found


def test_the_parser_sees_the_known_structure():
    """Guards the checker itself: it must see the real edges, or every other check is vacuous."""
    sources = _sources()
    edges = {(a, _internal(b, sources)) for a, b, _ in _edges(sources)}
    assert ("entk_core.workflows.sweep", "entk_core.workflows.analysis") in edges
    assert ("entk_core.families.run", "entk_core.store.runs") in edges
    assert ("entk_core.families.modadd_mlp", "entk_core.families.modadd_mlp.analysis") in edges
    assert _layer("entk_core.engine.kernels") == "engine" and _layer("pages._shared") == "pages"


def test_the_checker_catches_an_upward_import_and_a_cycle(tmp_path):
    """A deliberately broken tree: the checker reports both faults."""
    root = tmp_path / "repo"
    for rel, text in {
        "entk_core/__init__.py": "",
        "entk_core/engine/a.py": "def f():\n    from ..workflows import b\n",
        "entk_core/workflows/b.py": "from ..engine import a\n",
        "entk_core/store/c.py": "from ..engine.a import _hidden\n",
        "pages/p.py": "x = run.family.name == 'tms'\nsame = a.family.name == b.family.name\n",
        "app.py": "",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    globals()["REPO"], saved = root, REPO
    try:
        kinds = {k for k, _ in _violations()}
    finally:
        globals()["REPO"] = saved
    assert kinds == {"upward", "cycle", "private", "family-name"}


def test_layers_point_down_without_cycles_or_private_names():
    found = _violations()
    new = sorted(found - PENDING)
    fixed = sorted(PENDING - found)
    assert not new, "layering violations (see docs/ARCHITECTURE.md):\n" + "\n".join(f"{k}: {m}" for k, m in new)
    assert not fixed, ("fixed, so delete these lines from PENDING in tests/unit/test_architecture.py:\n"
                       + "\n".join(f"{k}: {m}" for k, m in fixed))


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_has_modules(layer):
    """The layout of the brief exists (a renamed folder would silently escape the rule)."""
    assert any(_layer(m) == layer for m in _sources())


# ------------------------------------------------------------ sizes and knowledge
MAX_MODULE_LINES = 700
"""No module of entk_core/ is longer (the brief: each reads in one sitting)."""


def _long_modules() -> list[str]:
    """``"path (lines)"`` of every module of entk_core/ over :data:`MAX_MODULE_LINES`."""
    out = []
    for p in sorted((REPO / "entk_core").rglob("*.py")):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{p.relative_to(REPO)} ({n} lines)")
    return out


def _family_words() -> set[str]:
    """Names that are family knowledge: every family package's name under entk_core/families
    (``modadd_mlp``) and its registry spelling (``modadd-mlp``), the built-in registry names,
    and the vocabulary of the modular-arithmetic families."""
    pkgs = {p.parent.name for p in (REPO / "entk_core" / "families").glob("*/__init__.py")}
    return pkgs | {p.replace("_", "-") for p in pkgs} | BUILTIN_FAMILIES | {"modular", "modadd", "torus"}


def _engine_family_knowledge() -> list[str]:
    """Where the engine knows a family: a definition of a Laplacian or a cliff rotation of a
    particular input geometry (any function or class named ``*laplacian*``, ``*torus*`` or
    ``rotate_cliff``), or a family's name anywhere in its source (code, strings, comments)."""
    import re

    words = _family_words()
    pattern = re.compile(r"(?<!\w)(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True))
                         + r")(?!\w)", re.IGNORECASE)
    out = []
    for p in sorted((REPO / "entk_core" / "engine").rglob("*.py")):
        rel = p.relative_to(REPO)
        text = p.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                low = node.name.lower()
                if "laplacian" in low or "torus" in low or low == "rotate_cliff":
                    out.append(f"{rel}:{node.lineno} defines {node.name}")
        for i, line in enumerate(text.splitlines(), 1):
            m = pattern.search(line)
            if m:
                out.append(f"{rel}:{i} names {m.group(1)!r}")
    return out


def _store_imports_planner() -> list[str]:
    """Store modules that import the engine's planner (the store needs at most the engine's
    bottom helpers, :mod:`entk_core.engine.units`)."""
    sources = _sources()
    return sorted(f"{a} imports {_internal(b, sources)}" for a, b, _ in _edges(sources)
                  if a.startswith("entk_core.store") and _internal(b, sources) == "entk_core.engine.planner")


def test_no_module_of_entk_core_is_over_700_lines():
    long = _long_modules()
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concern):\n" + "\n".join(long)


def test_the_engine_defines_no_family_laplacian_and_names_no_family():
    found = _engine_family_knowledge()
    assert not found, ("the engine knows no family: move this into the family's package "
                       "(entk_core/families/NAME/):\n" + "\n".join(found))


def test_the_store_does_not_import_the_planner():
    found = _store_imports_planner()
    assert not found, "the store imports the planner (use entk_core.engine.units):\n" + "\n".join(found)


def test_the_size_knowledge_and_store_checks_catch_planted_violations(tmp_path):
    """A deliberately broken tree: each of the three checks above reports its fault, and a
    clean tree passes them."""
    root = tmp_path / "repo"
    files = {
        "entk_core/__init__.py": "",
        "entk_core/engine/units.py": "def parse_bytes(v):\n    return int(v)\n",
        "entk_core/engine/planner.py": "from .units import parse_bytes\n",
        "entk_core/engine/spectra.py": "def fix_signs(v):\n    return v\n",
        "entk_core/families/modadd_mlp/__init__.py": "",
        "entk_core/store/cache.py": "from ..engine.units import parse_bytes\n",
        "app.py": "",
    }
    broken = {
        "entk_core/engine/big.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
        "entk_core/engine/measures.py": "def torus_laplacian(p):\n    return p\n",
        "entk_core/engine/notes.py": "# tuned on the modadd-mlp run\n",
        "entk_core/store/runs.py": "from ..engine.planner import parse_bytes\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    globals()["REPO"], saved = root, REPO
    try:
        clean = (_long_modules(), _engine_family_knowledge(), _store_imports_planner())
        for rel, text in broken.items():
            (root / rel).write_text(text)
        long, knowledge, store = _long_modules(), _engine_family_knowledge(), _store_imports_planner()
    finally:
        globals()["REPO"] = saved
    assert clean == ([], [], [])
    assert long == [f"entk_core/engine/big.py ({MAX_MODULE_LINES + 1} lines)"]
    assert any("defines torus_laplacian" in k for k in knowledge)
    assert any("notes.py:1 names 'modadd-mlp'" in k for k in knowledge)
    assert store == ["entk_core.store.runs imports entk_core.engine.planner"]
