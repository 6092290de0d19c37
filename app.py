"""eNTK Explorer dashboard. Run with ``streamlit run app.py``.

This file only sets up navigation and the shared sidebar (run and checkpoint picker,
mirrored in the URL so a view can be shared as a link); each page lives in pages/.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamlit as st  # noqa: E402

from pages import _shared  # noqa: E402

st.set_page_config(page_title="eNTK Explorer", page_icon=":material/show_chart:", layout="wide")

PAGES = [
    st.Page("pages/1_Spectrum.py", title="Spectrum", icon=":material/show_chart:", url_path="spectrum", default=True),
    st.Page("pages/2_Grokking.py", title="Grokking", icon=":material/timeline:", url_path="grokking"),
    st.Page("pages/5_Alignment.py", title="Alignment", icon=":material/grid_on:", url_path="alignment"),
    st.Page("pages/4_Transformer.py", title="Transformer", icon=":material/hub:", url_path="transformer"),
    st.Page("pages/3_TMS.py", title="TMS", icon=":material/scatter_plot:", url_path="tms"),
    st.Page("pages/6_Language_model.py", title="Language model", icon=":material/notes:", url_path="language-model"),
]

nav = st.navigation(PAGES)
st.sidebar.title("eNTK Explorer")
_shared.sidebar()
nav.run()
