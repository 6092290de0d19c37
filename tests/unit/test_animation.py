"""The epoch animation figure (entk_core.figures.animation) and the Training dynamics figures:
one frame per checkpoint, every frame valid Plotly, a payload bounded at the demo run's size,
the frames' pictures equal to the eigenvectors they come from."""
from __future__ import annotations

import json

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


def _decode(spec):
    """A Plotly array as it arrives in the browser: a list, or a base64 typed array."""
    import base64

    if isinstance(spec, dict) and "bdata" in spec:
        a = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=spec["dtype"])
        shape = spec.get("shape")
        return a.reshape([int(d) for d in str(shape).split(",")]) if shape else a
    return np.asarray(spec, dtype=float)


def test_one_frame_per_checkpoint_valid_and_small():
    epochs, ev, cliffs, vecs = _demo_like()
    fig = epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, vector_index=1, view="grid", current=200)
    assert [f.name for f in fig.frames] == [str(e) for e in epochs]
    spec = json.loads(pio.to_json(fig, validate=False))
    # every frame passes Plotly's own validation (the builder attaches them without it, for speed)
    go.Figure(data=spec["data"], layout=spec["layout"], frames=spec["frames"])
    # the payload: float32 typed arrays, no per-frame copy of the layout's axes or controls
    size = len(pio.to_json(fig, validate=False))
    assert size < 1_500_000, f"{size / 1e6:.2f} MB for 51 frames (measured 1.22 MB, the slider steps' copy included; the target is 5 MB)"
    n_traces = len(spec["data"])  # 3 cliff slots, the labels, the spectrum, the image, its power
    assert n_traces == 7
    for i, fr in enumerate(spec["frames"]):
        assert fr["layout"] == {"sliders": [{"active": i}]}  # trace data, and where Play puts the slider
        assert fr["traces"] == list(range(n_traces))
    # the figure opens on the current epoch, its slider too
    assert spec["layout"]["sliders"][0]["active"] == epochs.index(200)
    assert [s["label"] for s in spec["layout"]["sliders"][0]["steps"]] == [str(e) for e in epochs]
    assert _decode(spec["data"][4]["y"]).tolist() == pytest.approx(ev[epochs.index(200)].astype(np.float32).tolist())


def test_frames_carry_the_spectrum_cliffs_and_picture_of_their_checkpoint():
    epochs, ev, cliffs, vecs = _demo_like(E=6, k=40, p=7)
    cliffs = [[(0, 0, "constant"), (1, 12, "cliff 1")]] * 3 + [[(0, 0, "constant")]] * 3
    fig = epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, vector_index=3, view="grid")
    spec = json.loads(pio.to_json(fig, validate=False))
    for i, fr in enumerate(spec["frames"]):
        const, cliff1, labels, line, image, power = fr["data"]
        np.testing.assert_allclose(_decode(line["y"]), ev[i], rtol=1e-6)
        img, pw, _ = grid_image(vecs[i], 7)
        np.testing.assert_allclose(_decode(image["z"]), img, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_decode(power["z"]), pw, rtol=1e-5, atol=1e-7)
        assert [x for x in const["x"] if x is not None][:2] == [-0.5, 0.5]  # the constant mode's rectangle
        xs = [x for x in cliff1["x"] if x is not None]
        assert xs[:2] == ([0.5, 12.5] if i < 3 else [])  # cliff 1 where it was detected, empty elsewhere
        assert ("cliff 1: 12" in labels["text"]) == (i < 3)
    assert spec["layout"]["sliders"][0]["active"] == len(epochs) - 1  # default: the last checkpoint


def _value(v):
    return None if v is None else _decode(v).tolist() if isinstance(v, dict) else v


def test_a_slider_step_sets_every_trace_to_its_frame():
    """A heatmap frame needs a full redraw, so the slider's steps restyle (one redraw, where
    animating lays the figure out twice): step i gives every trace frame i's values, and the
    trace's own value for an attribute the frame leaves (None where the trace has none)."""
    epochs, ev, cliffs, vecs = _demo_like(E=5, k=30, p=7)
    cliffs = [[(0, 0, "constant"), (1, 3 + i, "cliff 1")] for i in range(5)]
    spec = json.loads(pio.to_json(epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, view="grid"), validate=False))
    steps = spec["layout"]["sliders"][0]["steps"]
    assert [s["method"] for s in steps] == ["restyle"] * 5
    kinds = [t.get("name") or t.get("mode") or t["type"] for t in spec["data"]]
    line, text, image = kinds.index("eigenvalue"), kinds.index("text"), kinds.index("heatmap")
    for i, (step, frame) in enumerate(zip(steps, spec["frames"])):
        values, traces = step["args"]
        assert traces == frame["traces"] == list(range(len(spec["data"])))
        for j, own in enumerate(spec["data"]):
            for attr, per_trace in values.items():
                want = frame["data"][j].get(attr, own.get(attr))
                got = per_trace[j]
                if attr == "y" and j == line:  # the spectrum: NaN past a short spectrum
                    np.testing.assert_array_equal(_decode(got), _decode(want))
                else:
                    assert _value(got) == _value(want), (i, j, attr)
        np.testing.assert_allclose(_decode(values["z"][image]), grid_image(vecs[i], 7)[0], rtol=1e-5, atol=1e-7)
        assert f"cliff 1: {3 + i}" in values["text"][text]
    # without a picture to redraw, the steps animate the frames (updated in place, no layout)
    only = json.loads(pio.to_json(epoch_animation_figure(epochs, ev, cliffs), validate=False))
    assert [s["args"][0] for s in only["layout"]["sliders"][0]["steps"]] == [[str(e)] for e in epochs]
    assert all("layout" not in f for f in only["frames"])


def test_plain_vector_view_and_spectrum_only():
    epochs, ev, cliffs, _ = _demo_like(E=4, k=12)
    vecs = np.random.default_rng(1).standard_normal((4, 30))
    fig = epoch_animation_figure(epochs, ev, cliffs, vectors=vecs, vector_index=0, view="vector")
    assert fig.data[-1].type == "scatter" and fig.data[-1].xaxis == "x2" and len(fig.to_dict()["frames"]) == 4
    only = epoch_animation_figure(epochs, ev, cliffs).to_dict()
    assert all(t["xaxis"] == "x" for t in only["data"]) and len(only["frames"]) == 4
    assert all(len(f["data"]) == len(only["data"]) for f in only["frames"])
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
