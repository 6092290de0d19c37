"""The toy-xor family's own dashboard page (declared by ``ToyXORFamily.pages``).

A Streamlit page script: the dashboard runs it by path when the page is opened (it is
never imported, so the family itself needs no Streamlit). It draws with the dashboard's
helpers (:mod:`entk_core.ui`: the sidebar's run and epoch, URL-mirrored controls, one-line
errors) and reads the family's own align report through the cached services.

What it shows: the inputs (x0, x1) coloured by one top eigenvector of the eNTK at the
sidebar's checkpoint (a sign pattern by quadrant is the XOR feature x0·x1, a gradient along
an axis a linear one), and how much of each family the top-k eigenvectors span.
"""
import plotly.graph_objects as go
import streamlit as st

from entk_core.ui import guarded, runs_of_family, select_run_button, selection, stop, url_int
from entk_core.workflows.services import Services
from entk_toy_family import ToyXORFamily

st.header("Toy XOR: the eNTK against the XOR feature")
run, epoch = selection()
if run is None or not isinstance(run.family, ToyXORFamily):
    st.info("This page analyses runs of the example plug-in family `toy-xor`; pick one in the sidebar, or train one: "
            "`python -m entk_core train toy-xor --out runs/toy-xor-seed0`.")
    for name in runs_of_family(ToyXORFamily):
        select_run_button(name, key=f"toy_open_{name}")
    stop()

vector = url_int("vector", "Eigenvector", 0, 7, 1, key="toy_vector",
                 help="which top eigenvector colours the inputs (0 is usually the near-constant mode)")
with guarded("cannot compute the toy view"):
    services = Services()
    res = services.spectrum(run, epoch)
    rep = run.family.align_report(run, epoch, services=services)
    x = run.data.kernel_x.numpy()
    v = res.eigenvectors[:, vector]
    fig = go.Figure(go.Scatter(x=x[:, 0], y=x[:, 1], mode="markers",
                               marker={"color": v, "colorscale": "RdBu", "size": 9, "colorbar": {"title": "value"}}))
    fig.update_layout(title=f"Eigenvector {vector} over the inputs (x0, x1), epoch {epoch}", height=460,
                      xaxis_title="x0", yaxis_title="x1", margin={"l": 60, "r": 40, "t": 60, "b": 50})
    st.plotly_chart(fig, key="toy_scatter", width="stretch")
    st.markdown("**Overlap of the top-k eigenvectors with each family** (out of its dimension: "
                + ", ".join(f"{k} {d}" for k, d in rep["families"].items()) + ")")
    st.dataframe(rep["overlap_of_top_k"], hide_index=True, width="content")
