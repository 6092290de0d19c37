"""Plain-text formatting shared by the pages: durations, sizes, percentages, the honest
cache caption, and :func:`plain` (any outside text made safe for Streamlit's markdown).
Pure functions (no Streamlit), so they are tested like any other."""
from __future__ import annotations

import html
import re
import time
import unicodedata
from typing import Any, Callable

import numpy as np

__all__ = ["fmt_seconds", "fmt_elapsed", "fmt_pct", "fmt_size", "cache_caption", "timed", "plain", "plain_html"]

# markdown/HTML specials that are markup wherever they stand (code spans, emphasis, raw HTML and
# autolinks, entities, ``$`` math): always backslash-escaped by :func:`plain`
_ALWAYS = set("\\`*<>&$~")
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp"}  # control, format (bidi overrides, zero-width), line/paragraph separators
_LEAD_LIST = re.compile(r"^(\d+)([.)])")
# GFM autolink literals, emoji shortcodes and Streamlit's ``:material/icon:`` are found in the
# text *after* parsing, so escaping cannot stop them: a word joiner (U+2060, invisible) after
# the scheme, ``www``, ``@`` or a colon before a letter does (and it breaks ``:red[...]`` too)
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|mailto|xmpp|www)(?=[:.])|@|:(?=[a-z/+-])")
WORD_JOINER = "\u2060"


def plain(text: object, limit: int | None = None) -> str:
    """``text`` made safe to put into any Streamlit call that renders markdown (``st.error``,
    ``st.info``, ``st.warning``, ``st.caption``, ``st.markdown``, widget and button labels):
    it is shown as the same characters, on one line, and is never markup -- no link, image,
    HTML, code span, emphasis, heading, list, math or colour directive, and no autolink
    (``http://``, ``www.`` and e-mail addresses get an invisible word joiner, U+2060, after
    their scheme, ``www`` or ``@``, and so do emoji and icon shortcodes after their colon:
    these are found in the parsed text, past any escape).

    Use it for every value from the URL, a file or folder name, or a file's content.
    ``limit`` cuts the text to that many characters (with "…"). Line breaks become spaces;
    control and invisible format characters (bidi overrides, zero-width) are dropped.

    How: CommonMark shows any backslash-escaped ASCII punctuation as itself. The characters
    that are markup anywhere (``\\ ` * < > & $ ~``) are always escaped; the others only where
    they make markup: ``]`` before ``(``, ``[`` or ``:`` (links, images, references), ``[``
    first, ``_`` outside a word, a list, heading or quote marker at the start. So ordinary
    messages (``runs/a/manifest.json: not valid JSON``, ``has shape [16, 14]``) keep their look
    in the page source too; ``tests/unit/test_ui_plain.py`` parses the result as CommonMark."""
    s = "".join(" " if ch in "\r\n\t\v\f" or unicodedata.category(ch) in ("Zl", "Zp") else ch
                for ch in str(text) if ch in "\r\n\t\v\f" or unicodedata.category(ch) not in _INVISIBLE)
    s = s.strip()
    if limit is not None and len(s) > limit:
        s = s[:max(0, limit - 1)] + "…"
    s = _AUTOLINK.sub(lambda m: m.group(0) + WORD_JOINER, s)
    out = []
    for i, ch in enumerate(s):
        prev = s[i - 1] if i else " "
        nxt = s[i + 1] if i + 1 < len(s) else " "
        if (ch in _ALWAYS
                or (ch == "]" and nxt in "([:")
                or (ch == "_" and not (prev.isalnum() and nxt.isalnum()))
                or (i == 0 and ch in "#-+=[")):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return _LEAD_LIST.sub(lambda m: m.group(1) + "\\" + m.group(2), "".join(out))


def plain_html(text: object, limit: int | None = None) -> str:
    """``text`` for Plotly titles, legends and hover text, which render a subset of HTML
    (``<a href>`` links, ``<b>``...): every ``<``, ``>``, ``&`` and quote as an entity, one line."""
    s = " ".join(str(text).split())
    if limit is not None and len(s) > limit:
        s = s[:max(0, limit - 1)] + "…"
    return html.escape(s, quote=True)


def fmt_seconds(s: float | None) -> str:
    """An estimate for people: ``"38 s"`` below 90 s, ``"3.5 min"`` below 90 min, else
    ``"2.1 h"``; ``"?"`` when unknown."""
    if s is None or not np.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_elapsed(s: float) -> str:
    """A measured time: ``"9 ms"`` below a second, else ``"0.61 s"`` style."""
    return f"{1000 * s:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_pct(x: Any) -> str:
    """``"97.3%"``; ``"–"`` for a missing or non-finite value."""
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.1%}"


def fmt_size(n: float) -> str:
    """``"512 B"``, ``"3.4 MB"`` (decimal units, at most GB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def cache_caption(meta: dict[str, Any], elapsed_s: float, computed_s: float | None) -> str:
    """``"from the cache in 9 ms; computed in 0.61 s on 2026-12-01"`` or
    ``"computed now in 0.61 s and cached"`` (``meta``: a result's ``cache`` and
    ``computed_at``; ``computed_s``: what computing it took, when known)."""
    when = meta.get("computed_at")
    on = f" on {str(when)[:10]}" if when else ""
    comp = "" if computed_s is None else f"; computed in {fmt_elapsed(computed_s)}{on}"
    if meta.get("cache") == "hit":
        return f"from the cache in {fmt_elapsed(elapsed_s)}{comp}"
    return f"computed now in {fmt_elapsed(elapsed_s)} and cached"


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
