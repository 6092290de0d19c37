"""The dashboard's page menu: the generic pages, then every registered family's own pages
(:attr:`entk_core.families.base.ModelFamily.pages`).

A family page is a Streamlit script named by module (:class:`~entk_core.families.base.FamilyPage`);
it is found with ``importlib.util.find_spec`` and run by path, never imported here. A page
that cannot be used -- its module is missing, or its url path is taken by a generic page or
an earlier family -- is left out of the menu with one line saying why (:func:`family_pages`).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import streamlit as st

from ..families.base import FamilyPage, get_family, list_families

__all__ = ["PageEntry", "family_pages", "menu"]


@dataclass(frozen=True)
class PageEntry:
    """A family page ready for the menu: its declaration, family name and script file."""

    page: FamilyPage
    family: str
    path: Path


def _script_path(module: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise ValueError(f"cannot find the page module {module}: {e}") from None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ValueError(f"the page module {module} is not an importable .py file")
    return Path(spec.origin)


def family_pages(reserved: Sequence[str] = ()) -> tuple[list[PageEntry], list[str]]:
    """``(pages, problems)``: every registered family's pages in menu order (``order``, then
    title), and one line per page left out (``reserved``: url paths already taken)."""
    taken = {p: "a generic page" for p in reserved}
    entries, problems = [], []
    found = [(page, name) for name in list_families() for page in get_family(name).pages]
    for page, name in sorted(found, key=lambda t: (t[0].order, t[0].title, t[1])):
        path_key = page.url_path.strip("/")
        if path_key in taken:
            problems.append(f"page '{page.title}' of family {name}: its url path /{path_key} is taken by "
                            f"{taken[path_key]}")
            continue
        try:
            entries.append(PageEntry(page, name, _script_path(page.script)))
        except ValueError as e:
            problems.append(f"page '{page.title}' of family {name}: {e}")
            continue
        taken[path_key] = f"family {name}"
    return entries, problems


def menu(generic: list, reserved: Sequence[str] = ()) -> list:
    """``generic`` (``st.Page`` objects) followed by an ``st.Page`` for every family page;
    a page left out is reported in the sidebar in one line. ``reserved``: more url paths no
    family page may take (app.py's hidden root page)."""
    entries, problems = family_pages([p.url_path for p in generic] + list(reserved))
    for line in problems:
        st.sidebar.warning(line, icon="⚠️")
    return list(generic) + [st.Page(e.path, title=e.page.title, icon=e.page.icon, url_path=e.page.url_path.strip("/"))
                            for e in entries]
