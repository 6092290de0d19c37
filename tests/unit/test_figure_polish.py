"""Figure polish (issue 22): log axes never left with one tick, legends that wrap in narrow
columns keep clear of the x-axis title, compared spectra drawn over the main one."""
from __future__ import annotations

import numpy as np

from entk_core.engine.spectra import Cliff
from entk_core.figures import spectrum_figure
from entk_core.figures.style import log_ticks


def test_a_log_axis_over_less_than_two_decades_gets_several_ticks_written_in_full():
    ticks, text = log_ticks(np.geomspace(600, 12, 80))  # TMS at β = 0.3: 1.7 decades, one power of ten inside
    assert len(ticks) >= 3 and ticks == sorted(ticks) and all(12 * 0.999 <= t <= 600 * 1.001 for t in ticks)
    assert "10²" in text and "2·10¹" in text and "5·10²" in text
    ticks, text = log_ticks(np.linspace(0.51, 0.93, 10))  # no power of ten inside at all
    assert len(ticks) >= 3 and all(t.endswith("10⁻¹") for t in text)
    assert log_ticks(np.geomspace(1, 1e-5, 30)) is None  # wide: one tick per decade serves
    fig = spectrum_figure(np.geomspace(600, 12, 80), [Cliff(start=0, size=10, ratio=2.0)], log=True)
    assert list(fig.layout.yaxis.tickvals) == log_ticks(np.geomspace(600, 12, 80))[0]
    wide = spectrum_figure(np.geomspace(1, 1e-5, 80), log=True)
    assert wide.layout.yaxis.dtick == 1 and wide.layout.yaxis.tickvals is None


def test_a_narrow_chart_reserves_room_for_its_wrapped_legend_under_the_axis_title():
    ev = np.geomspace(600, 12, 80)
    refs = {"10 represented": 9.5, "n = 50": 49.5}
    wide = spectrum_figure(ev, log=True, height=330, reference_lines=refs)
    narrow = spectrum_figure(ev, log=True, height=330, reference_lines=refs, width_px=300)
    assert narrow.layout.margin.b > wide.layout.margin.b  # a second legend row below the title


def test_compared_spectra_are_drawn_over_the_main_one():
    fig = spectrum_figure(np.geomspace(1, 1e-3, 50), extra={"epoch 10": np.geomspace(1, 1e-3, 50)}, selected=3)
    names = [t.name for t in fig.data]
    assert names.index("epoch 10") > names.index("eigenvalue")


def test_the_lm_spectrum_gets_the_same_ticks():
    from entk_core.figures.lm import lm_spectrum_figure

    ev = np.geomspace(40, 3, 16)  # a few directions: barely over a decade
    fig = lm_spectrum_figure(ev)
    assert list(fig.layout.yaxis.tickvals) == log_ticks(ev)[0] and len(fig.layout.yaxis.tickvals) >= 3
