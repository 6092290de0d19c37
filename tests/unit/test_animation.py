"""The epoch animation figure (entk_core.figures.animation) and the Training dynamics figures:
one frame per checkpoint, every frame valid Plotly, a payload bounded at the demo run's size,
the frames' images decoded and compared with the spectra and eigenvectors they come from."""
from __future__ import annotations

import json
import re

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from entk_core.figures.animation import epoch_animation_figure
from entk_core.figures.dynamics import kernel_curves_figure, log10_positive, spectrum_over_training_figure
from entk_core.figures.vectors import grid_image


def _demo_like(E: int = 51, k: int = 200, p: int = 29, seed: int = 0):
    """Arrays shaped like the p = 29 demo run's frames: 51 checkpoints, top 200 of 841."""
    rng = np.random.default_rng(seed)
    ev = np.sort(rng.lognormal(0, 2, size=(E, k)), axis=1)[:, ::-1]
    cliffs = [[(0, 0, "constant"), (1, 56, "cliff 1"), (57, 112, "cliff 2")][: 1 + (i * 3) // E] for i in range(E)]
    vecs = rng.standard_normal((E, p * p))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return list(range(0, 10 * E, 10)), ev, cliffs, vecs


def _png(uri: str) -> np.ndarray:
    """A PNG data URI as the browser shows it: ``(H, W, 3)`` uint8."""
    import base64
    import io

    from PIL import Image

    assert uri.startswith("data:image/png;base64,"), uri[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _svg(uri: str) -> str:
    import base64

    assert uri.startswith("data:image/svg+xml;base64,"), uri[:40]
    return base64.b64decode(uri.split(",", 1)[1]).decode()


def _lines(svg: str) -> list[np.ndarray]:
    """The polylines of an SVG frame: one ``(n, 2)`` array of points (0..1000 box) each."""
    return [np.array([[float(c) for c in pt.split(",")] for pt in m.split()])
            for m in re.findall(r'<polyline points="([^"]*)"', svg)]


def _cells(img: np.ndarray, p: int) -> np.ndarray:
    """The colour at the centre of each of the ``p × p`` cells of a picture: ``(p, p, 3)``."""
    h, w = img.shape[:2]
    c = (np.arange(p) + 0.5)
    return img[(c * h / p).astype(int)][:, (c * w / p).astype(int)]


def _colors(z: np.ndarray, lo: float, hi: float, scale: str) -> np.ndarray:
    """Plotly's own colour for each value (what a heatmap of ``z`` from ``lo`` to ``hi`` shows)."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    t = np.clip((z - lo) / (hi - lo), 0, 1).ravel().tolist()
    return np.array([unlabel_rgb(c) for c in sample_colorscale(scale, t)]).reshape(z.shape + (3,))


def test_one_frame_per_checkpoint_valid_and_small():
    epochs, ev, cliffs, vecs = _demo_like()
    fig = epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, vector_index=1, view="grid", current=200)
    assert [f.name for f in fig.frames] == [str(e) for e in epochs]
    spec = json.loads(pio.to_json(fig, validate=False))
    # every frame passes Plotly's own validation (the builder attaches them without it, for speed)
    go.Figure(data=spec["data"], layout=spec["layout"], frames=spec["frames"])
    size = len(pio.to_json(fig, validate=False))
    # random vectors: the demo run's pictures compress better (1.26 MB measured); the target is 5 MB
    assert size < 2_500_000, f"{size / 1e6:.2f} MB for 51 frames"
    assert len(spec["layout"]["images"]) == 3  # the spectrum, the image, its power
    for i, fr in enumerate(spec["frames"]):
        assert set(fr["layout"]) == {"images", "sliders"} and fr["layout"]["sliders"] == [{"active": i}]
        assert "data" not in fr
        # the frame's images sit where the figure's do
        assert [{k: v for k, v in im.items() if k != "source"} for im in fr["layout"]["images"]] == \
            [{k: v for k, v in im.items() if k != "source"} for im in spec["layout"]["images"]]
    # the figure opens on the current epoch, its slider too
    i0 = epochs.index(200)
    assert spec["layout"]["sliders"][0]["active"] == i0
    assert [im["source"] for im in spec["layout"]["images"]] == [im["source"] for im in spec["frames"][i0]["layout"]["images"]]
    assert [s["label"] for s in spec["layout"]["sliders"][0]["steps"]] == [str(e) for e in epochs]
    # every panel has its axes and nothing to hover
    assert spec["layout"]["hovermode"] is False
    assert [(t["xaxis"], t["yaxis"]) for t in spec["data"]] == [("x", "y"), ("x2", "y2"), ("x3", "y3")]


def test_frames_carry_the_spectrum_cliffs_and_picture_of_their_checkpoint():
    epochs, ev, cliffs, vecs = _demo_like(E=6, k=40, p=7)
    ev[4, 30:] = np.nan  # a short spectrum: the line stops at index 29
    cliffs = [[(0, 0, "constant"), (1, 12, "cliff 1")]] * 3 + [[(0, 0, "constant")]] * 3
    fig = epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, vector_index=3, view="grid")
    spec = json.loads(pio.to_json(fig, validate=False))
    y0, y1 = spec["layout"]["yaxis"]["range"]
    m = max(np.abs(grid_image(v, 7)[0]).max() for v in vecs)
    for i, fr in enumerate(spec["frames"]):
        line, image, power = (im["source"] for im in fr["layout"]["images"])
        svg = _svg(line)
        (pts,) = _lines(svg)
        n = 30 if i == 4 else 40
        # x: the index's place on [-0.5, k - 0.5]; y: log10 of the eigenvalue on the axis range
        np.testing.assert_allclose(pts[:, 0], (np.arange(n) + 0.5) / 40 * 1000, atol=0.06)
        np.testing.assert_allclose(y1 - pts[:, 1] / 1000 * (y1 - y0), np.log10(ev[i, :n]), atol=1e-3 * (y1 - y0))
        assert ('cliff 1: 12' in svg) == (i < 3) and "constant mode" not in svg
        assert svg.count("<rect") == (2 if i < 3 else 1)  # the constant mode's band and cliff 1's
        img, pw, _ = grid_image(vecs[i], 7)
        # each cell has the colour a Plotly heatmap gives its value (256 levels: within 2 of 255)
        assert np.abs(_cells(_png(image), 7).astype(int) - _colors(img, -m, m, "RdBu")).max() <= 2
        assert np.abs(_cells(_png(power), 7).astype(int) - _colors(pw, pw.min(), pw.max(), "Viridis")).max() <= 2
    assert spec["layout"]["sliders"][0]["active"] == len(epochs) - 1  # default: the last checkpoint


def test_a_slider_step_shows_its_frame():
    """A slider step sets the images' sources to its frame's (``Plotly.relayout``, drawn with
    no layout pass), and the frame's cliffs and picture change with it."""
    epochs, ev, cliffs, vecs = _demo_like(E=5, k=30, p=7)
    cliffs = [[(0, 0, "constant"), (1, 3 + i, "cliff 1")] for i in range(5)]
    spec = json.loads(pio.to_json(epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, view="grid"), validate=False))
    steps = spec["layout"]["sliders"][0]["steps"]
    assert [s["method"] for s in steps] == ["relayout"] * 5
    for i, (step, frame) in enumerate(zip(steps, spec["frames"])):
        (values,) = step["args"]
        assert values == {f"images[{j}].source": im["source"] for j, im in enumerate(frame["layout"]["images"])}
        assert f"cliff 1: {3 + i}" in _svg(values["images[0].source"])
    assert len({s["args"][0]["images[1].source"] for s in steps}) == 5  # five different pictures


def test_plain_vector_view_and_spectrum_only():
    epochs, ev, cliffs, _ = _demo_like(E=4, k=12)
    vecs = np.random.default_rng(1).standard_normal((4, 30))
    spec = json.loads(pio.to_json(epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, vector_index=0,
                                                         view="vector"), validate=False))
    m = spec["layout"]["yaxis2"]["range"][1]
    assert m == pytest.approx(1.05 * np.abs(vecs).max())
    for i, fr in enumerate(spec["frames"]):
        line, vec = (im["source"] for im in fr["layout"]["images"])
        (pts,) = _lines(_svg(vec))
        np.testing.assert_allclose(m - pts[:, 1] / 1000 * 2 * m, vecs[i], atol=1e-3 * m)
    assert spec["layout"]["images"][1]["xref"] == "x2" and len(spec["frames"]) == 4
    only = json.loads(pio.to_json(epoch_animation_figure(epochs, ev, cliffs), validate=False))
    assert [t["xaxis"] for t in only["data"]] == ["x"] and len(only["frames"]) == 4
    assert all(len(f["layout"]["images"]) == 1 for f in only["frames"])
    assert only["layout"]["xaxis"]["domain"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="E = 4"):
        epoch_animation_figure(epochs, ev[:3], cliffs)


def test_dynamics_figures():
    epochs = [0, 10, 20]
    ev = np.array([[4.0, 1.0, 0.0], [8.0, 2.0, 1e-3], [9.0, 3.0, np.nan]])
    fig = spectrum_over_training_figure(epochs, ev, cliff_ends=[[0], [], [0, 1]], current=10)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (3, 3)  # index x epoch
    np.testing.assert_allclose(z[:, 1], np.log10([8.0, 2.0, 1e-3]), atol=1e-4)
    assert np.isnan(z[2, 0]) and np.isnan(z[2, 2])  # zero and missing eigenvalues are not drawn
    assert list(fig.data[1].x) == [0, 20, 20] and list(fig.data[1].y) == [0.5, 0.5, 1.5]
    np.testing.assert_array_equal(log10_positive(np.array([100.0, -1.0])), np.array([2.0, np.nan], dtype=np.float32))
    curves = {"kernel_distance_prev": np.array([np.nan, 0.2, 0.1]), "effective_rank": np.array([5.0, 4.0, 3.0])}
    cf = kernel_curves_figure(epochs, curves, current=20, markers={"onset 15": 15.0})
    names = [t.name for t in cf.data]
    assert "kernel distance to the previous checkpoint" in names and "effective rank" in names
    assert "target_alignment" not in " ".join(names)  # missing fields are left out
    assert {s.x0 for s in cf.layout.shapes} == {20, 15.0}
    assert cf.layout.yaxis.type == "log" and cf.layout.yaxis2.type != "log"  # distances on a log axis


def test_the_animation_shades_each_block_in_the_spectrum_charts_colour():
    """A block has one colour wherever it is drawn: the animation's SVG bands and the spectrum
    chart's shaded rectangles (grey for the constant mode, then the numbered cliffs' colours)."""
    from types import SimpleNamespace

    from entk_core.figures.animation import spectrum_svg
    from entk_core.figures.spectra import spectrum_figure

    ev = np.array([9.0, 5.0, 4.9, 4.8, 1.0, 0.9, 0.1, 0.09])
    blocks = [(0, 0, "constant"), (1, 3, "cliff 1"), (4, 5, "cliff 2"), (6, 7, "cliff 3")]
    svg = _svg(spectrum_svg(np.log10(ev), blocks, [-1.5, 1.5]))
    fills = re.findall(r'<rect [^>]*fill="rgba\((\d+), (\d+), (\d+), [\d.]+\)"', svg)
    cl = [SimpleNamespace(start=s, end=e, size=e - s + 1) for s, e, _ in blocks]
    fig = spectrum_figure(ev, cl, labels=[b[2] for b in blocks])
    rects = [s.fillcolor for s in fig.layout.shapes if s.type == "rect"]
    assert len(fills) == len(rects) == 4
    as_rgb = [tuple(int(c.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)) for c in rects]
    assert [tuple(map(int, f)) for f in fills] == as_rgb
    assert len(set(as_rgb)) == 4 and as_rgb[0] == (0x9E, 0x9E, 0x9E)
