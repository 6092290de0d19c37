"""entk_core.ui.memo.shared_figure: one build per content, shared; anything else builds anew."""
from __future__ import annotations

import numpy as np

from entk_core.ui import memo


def _counting():
    calls = []

    def build(x, *, title="", extra=None):
        calls.append((x, title, extra))
        return object()

    return build, calls


def test_same_content_is_built_once_and_shared():
    build, calls = _counting()
    a = memo.shared_figure(build, np.arange(5.0), title="t", extra={"c": [1, 2]})
    b = memo.shared_figure(build, np.arange(5.0), title="t", extra={"c": [1, 2]})  # equal content, new objects
    assert a is b and len(calls) == 1


def test_any_change_of_content_builds_again():
    build, calls = _counting()
    base = memo.shared_figure(build, np.arange(5.0), title="t")
    changed = [memo.shared_figure(build, np.arange(5.0) + 1e-12, title="t"),  # one value
               memo.shared_figure(build, np.arange(5.0, dtype=np.float32), title="t"),  # dtype
               memo.shared_figure(build, np.arange(5.0).reshape(1, 5), title="t"),  # shape
               memo.shared_figure(build, np.arange(5.0), title="u"),  # a keyword
               memo.shared_figure(build, [0.0, 1.0, 2.0, 3.0, 4.0], title="t"),  # a list is not an array
               memo.shared_figure(build, np.arange(5.0), title="t")]  # same as base: shared
    assert len({id(f) for f in [base] + changed[:-1]}) == 6 and changed[-1] is base
    assert len(calls) == 6


def test_arguments_without_a_digest_build_every_time():
    build, calls = _counting()
    opaque = object()
    assert memo.shared_figure(build, opaque) is not memo.shared_figure(build, opaque)
    assert len(calls) == 2


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(memo, "MAX_FIGURES", 3)
    build, calls = _counting()
    first = memo.shared_figure(build, 0)
    for i in range(1, 4):
        memo.shared_figure(build, i)
    assert memo.shared_figure(build, 0) is not first  # dropped, built again
    assert len(calls) == 5 and len(memo._MEMO) <= 3
