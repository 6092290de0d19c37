"""The layering rule of docs/ARCHITECTURE.md, checked on the source (no import is executed).

Layers, lowest first: errors < engine < store < families < workflows < figures < cli < pages.
The pages layer is app.py, ``app_pages/``, ``entk_core/ui/`` and every family's page script
(``entk_core/families/<pkg>/page.py``), the only modules that may import Streamlit.
``bench`` may import anything below ``cli``; the package root ``entk_core/__init__.py``
(the public API facade) anything below ``cli``. A module may import its own layer and
the layers below, never above; there is no import cycle (function-level imports count:
they only hide a cycle); no module imports a private name (``_x``) of another module,
except from a shared private module (one whose own name starts with ``_``); and no
family name is compared as a string outside its own family package.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LAYERS = ["errors", "engine", "store", "families", "workflows", "figures", "bench", "cli", "pages"]
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
    if parts[1] == "ui" or (parts[1] == "families" and len(parts) > 3 and parts[3] == "page"):
        return "pages"  # the dashboard's helpers, and each family's own page script
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
    assert _layer("entk_core.engine.kernels") == "engine" and _layer("app_pages.spectrum") == "pages"


def _in_tree(root: Path, files: dict[str, str], check):
    """``check()`` run on a tree of ``files`` written under ``root`` instead of the repository."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    globals()["REPO"], saved = root, REPO
    try:
        return check()
    finally:
        globals()["REPO"] = saved


def test_the_checker_catches_an_upward_import_and_a_cycle(tmp_path):
    """A deliberately broken tree: the checker reports both faults."""
    found = _in_tree(tmp_path / "repo", {
        "entk_core/__init__.py": "",
        "entk_core/engine/a.py": "def f():\n    from ..workflows import b\n",
        "entk_core/workflows/b.py": "from ..engine import a\n",
        "entk_core/store/c.py": "from ..engine.a import _hidden\n",
        "pages/p.py": "x = run.family.name == 'tms'\nsame = a.family.name == b.family.name\n",
        "app.py": "",
    }, _violations)
    assert {k for k, _ in found} == {"upward", "cycle", "private", "family-name"}


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


# ------------------------------------------------------- the pages layer (issues 19 §3, 21)
GENERIC_PAGES = ("app", "app_pages", "entk_core.ui")
"""Modules that serve every family (the generic pages, the shared sidebar and page helpers)."""
FAMILY_AGNOSTIC = {"entk_core.families", "entk_core.families.base", "entk_core.families.run",
                   "entk_core.families.family_page", "entk_core.families.schema"}
"""What a generic page may import from the families layer: the registry, the base class, runs."""
FAMILY_TYPE_NAMES = {"ModelFamily"}
"""Type names a generic page may test against (the base class every family shares)."""


def _is_generic_page(mod: str) -> bool:
    return any(mod == g or mod.startswith(g + ".") for g in GENERIC_PAGES)


def _family_package(target: str) -> str | None:
    """``entk_core.families.<pkg>`` when ``target`` is (inside) a family package."""
    parts = target.split(".")
    if parts[:2] == ["entk_core", "families"] and len(parts) > 2 and ".".join(parts[:3]) not in FAMILY_AGNOSTIC:
        return ".".join(parts[:3])
    return None


def _type_names(node: ast.AST) -> list[str]:
    """The class names in an ``isinstance``/``issubclass`` second argument."""
    if isinstance(node, ast.Tuple):
        return [n for elt in node.elts for n in _type_names(elt)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def _module_aliases(tree: ast.AST, mod: str, is_pkg: bool, sources: dict[str, Path]) -> dict[str, str]:
    """Local names bound to project modules by imports (``import a.b as m``, ``from a import b``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in sources:
                    out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, is_pkg, node)
            for a in node.names:
                if f"{target}.{a.name}" in sources:
                    out[a.asname or a.name] = f"{target}.{a.name}"
    return out


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _page_violations() -> set[tuple[str, str]]:
    return _page_violations_in(REPO)


@functools.lru_cache(maxsize=4)
def _page_violations_in(repo: Path) -> frozenset[tuple[str, str]]:
    """The rules of the pages layer (docs/ARCHITECTURE.md): generic pages import no family
    package and test no family type; Streamlit only in the pages layer; no private name of
    another module reached by attribute."""
    sources = _sources()
    found: set[tuple[str, str]] = set()
    for mod, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(REPO)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            for t in targets:
                if (t == "streamlit" or t.startswith("streamlit.")) and _layer(mod) != "pages":
                    found.add(("streamlit", f"{rel} ({_layer(mod)}) imports {t}"))
                if _is_generic_page(mod) and _family_package(t):
                    found.add(("family-import", f"{rel} imports the family package {_family_package(t)}"))
            if _is_generic_page(mod) and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                for name in _type_names(node.args[1]):
                    if (name.endswith("Family") or name.endswith("Config")) and name not in FAMILY_TYPE_NAMES:
                        found.add(("family-type", f"{rel} tests the family type {name}"))
        aliases = _module_aliases(tree, mod, is_pkg, sources)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            base = _dotted(node.value)
            if base is None:
                continue
            head, _, rest = base.partition(".")
            target = aliases.get(head)
            if target is None:
                continue
            target = f"{target}.{rest}" if rest else target
            if target in sources and target != mod and not target.split(".")[-1].startswith("_"):
                found.add(("private", f"{rel} reaches {node.attr} of {target} by attribute"))
    return frozenset(found)


def test_the_page_checker_catches_each_fault(tmp_path):
    """A deliberately broken tree: every rule of the pages layer is reported."""
    found = _in_tree(tmp_path / "repo", {
        "entk_core/__init__.py": "",
        "entk_core/families/__init__.py": "",
        "entk_core/families/base.py": "class ModelFamily: ...\n",
        "entk_core/families/tms/__init__.py": "class TMSFamily: ...\n",
        "entk_core/families/tms/page.py": "import streamlit as st\nfrom entk_core.families.tms import TMSFamily\n",
        "entk_core/workflows/lm.py": "def _fmt_s(s):\n    return str(s)\n",
        "entk_core/workflows/chart.py": "import streamlit\n",
        "entk_core/ui/__init__.py": "from entk_core.families import base\nok = isinstance(1, base.ModelFamily)\n",
        "app_pages/p.py": ("from entk_core.families.tms import analysis\nfrom entk_core.workflows import lm as wlm\n"
                           "from entk_core.families import tms\n"
                           "x = isinstance(run.family, tms.TMSFamily)\ny = wlm._fmt_s(3)\n"),
        "app.py": "",
    }, _page_violations)
    kinds = {k for k, _ in found}
    assert kinds == {"streamlit", "family-import", "family-type", "private"}, found
    msgs = "\n".join(m for _, m in found)
    assert "entk_core/workflows/chart.py (workflows) imports streamlit" in msgs
    assert "tms/page.py" not in msgs  # a family's own page may import its package and Streamlit
    assert "entk_core/ui/__init__.py" not in msgs  # the base class and the registry are family-agnostic
    assert "app_pages/p.py reaches _fmt_s of entk_core.workflows.lm by attribute" in msgs


def test_generic_pages_know_no_family():
    """The generic pages (app.py, app_pages/, the shared sidebar and helpers in entk_core/ui)
    import no family package and test no family type: what differs by family is asked of the
    family (docs/ARCHITECTURE.md, "Pages are family capabilities")."""
    found = sorted(m for k, m in _page_violations() if k in ("family-import", "family-type"))
    assert not found, "\n".join(found)
    assert any(_is_generic_page(m) for m in _sources() if m.startswith("entk_core.ui"))  # the checker sees them


def test_streamlit_only_in_the_pages_layer():
    found = sorted(m for k, m in _page_violations() if k == "streamlit")
    assert not found, "\n".join(found)
    assert _layer("entk_core.families.tms.page") == "pages" and _layer("entk_core.ui.urlstate") == "pages"
    assert _layer("entk_core.families.tms") == "families"


def test_no_private_name_reached_by_attribute():
    """``wlm._fmt_s(x)`` is a private import in disguise (the layering test's private rule)."""
    found = sorted(m for k, m in _page_violations() if k == "private")
    assert not found, "\n".join(found)


# ------------------------------------------------------------ sizes and knowledge
MAX_MODULE_LINES = 700
"""No module of entk_core/ or app_pages/ (nor app.py) is longer (the brief: each reads in one sitting)."""


def _long_modules() -> list[str]:
    """``"path (lines)"`` of every module of entk_core/, app_pages/ and app.py over :data:`MAX_MODULE_LINES`."""
    out = []
    for p in sorted(_sources().values()):
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
