"""A family's own dashboard page, as the family declares it (:attr:`ModelFamily.pages`).

A declaration only: nothing here imports Streamlit or the page. The dashboard
(:mod:`entk_core.ui.menu`) puts every registered family's pages in its menu.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FamilyPage"]


@dataclass(frozen=True)
class FamilyPage:
    """A dashboard page a family contributes beside the generic ones (``ModelFamily.pages``).

    The page is a Streamlit script, like the generic pages: ``script`` names its module
    (``"my_plugin.page"``), which the dashboard runs by path on every visit and never
    imports (so declaring a page costs a family nothing outside the dashboard, and its
    package needs no Streamlit). The script draws with :mod:`entk_core.ui` (the sidebar's
    run and epoch: ``entk_core.ui.selection()``; URL-mirrored controls: ``entk_core.ui.url_*``).

    Attributes:
      title: the menu entry (``"TMS"``).
      url_path: the page's path (``/tms``); unique across the generic pages and every family.
      script: the page module, importable by name (``"entk_core.families.tms.page"``).
      icon: a Material icon (``":material/scatter_plot:"``) or an emoji.
      order: position in the menu after the generic pages (lower first; ties by title).
    """

    title: str
    url_path: str
    script: str
    icon: str = ":material/extension:"
    order: int = 100
