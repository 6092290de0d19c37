"""Outside text is never markup (:func:`entk_core.ui.plain`, issue 22 §0): whatever a link, a
folder name or a file holds, the markdown Streamlit renders from ``plain(text)`` is one
paragraph of plain text showing exactly ``text`` (on one line). Checked with a CommonMark
parser (markdown-it-py, pinned in requirements-dev.txt); GFM's autolinks and what the browser
really draws are checked by ``tests/acceptance/test_browser_links.py``."""
from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from entk_core.ui import plain, plain_html
from entk_core.ui.format import WORD_JOINER

HOSTILE = [
    "/![p](http://evil.invalid/q.png)",
    "[Sign in again](http://evil.invalid/login)",
    "x` ![p](http://evil.invalid/q.png) `y",
    "``` <script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<http://evil.invalid>",
    "[a]: http://evil.invalid\n[a]",
    "*em* **strong** _u_ ~~s~~ $x^2$ | a | b |",
    "# heading", "- item", "+ item", "1. item", "2) item", "> quote", "    indented code", "=== ",
    "&lt;b&gt; &#x3C;script&#x3E; &amp;",
    ":red[alert] :material/warning: :smile:",
    "a\\`b\\\\[c]",
    "line one\nline two\r\n\tthree",
    "runs/modadd-mlp-p29-seed0/manifest.json: not valid JSON",
    "..%2F..%2Fetc/passwd ../../etc /etc/passwd",
    "x" * 3000,
]


def _shown(md_text: str, joiners: bool = False) -> str:
    """The text a CommonMark renderer draws from ``md_text``; fails on any markup node.
    ``joiners``: keep the invisible word joiners plain() puts into autolink look-alikes."""
    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    tokens = md.parse(md_text)
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], (md_text, tokens)
    kids = tokens[1].children or []
    bad = [t.type for t in kids if t.type not in ("text", "text_special")]
    assert not bad, (md_text, bad)
    text = "".join(t.content for t in kids)
    return text if joiners else text.replace(WORD_JOINER, "")


@pytest.mark.parametrize("text", HOSTILE)
def test_plain_shows_the_same_characters_and_no_markup(text):
    assert _shown(plain(text)) == re.sub(r"[\r\n\t]", " ", text).strip()


def test_plain_keeps_ordinary_messages_readable_in_the_page_source():
    for msg in ("runs/a/manifest.json: not valid JSON", "top must be between 1 and 841, got 5000",
                "a bug: the server log has the traceback; ENTK_DEBUG=1 shows it here"):
        assert plain(msg) == msg


def test_plain_breaks_autolinks_and_drops_invisible_characters():
    s = plain("see http://evil.invalid, HTTPS://x.y, www.evil.invalid and me@evil.invalid")
    # GFM's literal autolinks (http://, https://, www., e-mail) are matched on the parsed text:
    # none of them may survive there
    text = _shown(s, joiners=True)
    assert _shown(s) == "see http://evil.invalid, HTTPS://x.y, www.evil.invalid and me@evil.invalid"
    assert not re.search(r"(?i)(https?://|www\.|\w@\w)", text), text
    assert plain("ab\u202ecd\u200bef\x00") == "abcdef"  # bidi override, zero-width space, NUL


def test_plain_cuts_long_text():
    s = plain("y" * 500, limit=60)
    assert len(s) == 60 and s.endswith("…")


def test_plain_html_is_inert_in_plotly_text():
    assert plain_html('<a href="\\\\evil.invalid">x</a>\n<b>') == "&lt;a href=&quot;\\\\evil.invalid&quot;&gt;x&lt;/a&gt; &lt;b&gt;"


def test_server_paths_are_shown_inside_their_folder_never_doubled(monkeypatch, tmp_path):
    from entk_core.ui import relative_paths

    monkeypatch.chdir(tmp_path)
    for root in ("runs", str(tmp_path / "runs"), str(tmp_path / "runs") + "/"):
        monkeypatch.setenv("ENTK_RUNS_DIR", root)
        assert relative_paths(f"{tmp_path}/runs/nope: no such run folder") == "runs/nope: no such run folder"
        assert relative_paths("runs/nope: no such run folder") == "runs/nope: no such run folder"
        assert relative_paths(f"inside the runs folder {tmp_path}/runs") == "inside the runs folder runs/"
        assert relative_paths(f"{tmp_path}/runsx/a") == f"{tmp_path}/runsx/a"  # another folder stays as it is


def test_plain_breaks_shortcodes():
    assert not re.search(r":[\w/+-]+:", _shown(plain(":smile: :material/home: :+1:"), joiners=True))
