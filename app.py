"""eNTK Explorer dashboard. Run with ``streamlit run app.py``.

This file sets up navigation and the shared sidebar (run and checkpoint picker). The generic
pages (Spectrum, Grokking, Alignment) live in ``app_pages/``; every registered model family
adds its own pages (``ModelFamily.pages``: TMS, Transformer, Language model, and any plug-in's),
found by :mod:`entk_core.ui.menu`. The helpers every page uses are :mod:`entk_core.ui`; the
whole view is mirrored in the URL (:mod:`entk_core.ui.urlstate`, ``docs/url-parameters.md``).

Why the pages folder is not called ``pages/``: when a folder named ``pages`` sits next to
the entry script, Streamlit (1.67) runs the first script run of the server in its
multipage-v1 compatibility mode, which registers the files of that folder under names
derived from their file names; a deep link such as ``/grokking?run=...`` opened before
any other visit then matches none of them, and the browser shows a "Page not found"
dialog over the right page (upstream streamlit#8860). With no ``pages/`` folder, the
pages are only ever registered by ``st.navigation`` below and every deep link resolves,
first or later. ``tests/unit/test_dashboard_lib.py`` keeps it that way. The root URL is a
hidden twin of the Spectrum page (Streamlit gives its default page the path "" whatever
``url_path`` says), so ``/spectrum?...`` and ``/?...`` both open the Spectrum page.

Viewer mode (``ENTK_VIEWER=1`` or ``streamlit run app.py -- --viewer``,
:mod:`entk_core.ui.mode`): the sidebar says so, and no page offers training, building,
clearing, deleting, uploading or a typed path.

Worker processes: the sweep's pool workers import the main module of the process
that starts them, which in the server is this file (as ``__mp_main__``). Everything below
runs only when Streamlit runs the file as ``__main__``, so a worker imports nothing but the
standard library here: no Streamlit call outside a script run (no "missing ScriptRunContext"
warnings) and no page code in the workers.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import streamlit as st

    from entk_core.ui import guarded, menu, runs, style, urlstate

    # A local icon: a Material icon as page icon is fetched from fonts.gstatic.com by the browser.
    st.set_page_config(page_title="eNTK Explorer", page_icon=str(ROOT / "static" / "favicon.png"), layout="wide")
    style.page_style()  # stale elements dim without a fade (entk_core.ui.style)
    spectrum = st.Page("app_pages/spectrum.py", title="Spectrum", icon=":material/show_chart:", url_path="spectrum")
    generic = [
        spectrum,
        st.Page("app_pages/grokking.py", title="Grokking", icon=":material/timeline:", url_path="grokking"),
        st.Page("app_pages/alignment.py", title="Alignment", icon=":material/grid_on:", url_path="alignment"),
        st.Page("app_pages/dynamics.py", title="Training dynamics", icon=":material/ssid_chart:", url_path="dynamics"),
    ]
    # then every registered family's own pages (ModelFamily.pages: TMS, Transformer, Language model, plug-ins')
    pages = menu.menu(generic, reserved=["home"])
    # The root URL: the Spectrum script once more, as a hidden default page. Streamlit serves
    # its default page at "/" only and gives it the url path "" (st.Page's url_path is ignored
    # for it), so a default Spectrum page would leave /spectrum unmatched ("Page not found").
    home = st.Page("app_pages/spectrum.py", title="Spectrum", icon=":material/show_chart:", url_path="home",
                   default=True, visibility="hidden")
    # Streamlit's own page menu drops the query string on a page switch; the sidebar draws page
    # links carrying the whole view instead (urlstate.sync_url fills them at the end of the run).
    nav = st.navigation([home, *pages], position="hidden")
    urlstate.nav_menu([home if nav is home and p is spectrum else p for p in pages])
    st.sidebar.title("eNTK Explorer")
    runs.sidebar()
    urlstate.url_box()
    with guarded(f"the {nav.title} page failed"):  # a bug in a page is one line (the traceback: ENTK_DEBUG=1)
        nav.run()
    urlstate.sync_url(final=True)


if __name__ == "__main__":
    main()
