"""eNTK Explorer dashboard. Run with ``streamlit run app.py``.

This file only sets up navigation and the shared sidebar (run and checkpoint picker,
mirrored in the URL so a view can be shared as a link); each page lives in pages/.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamlit as st  # noqa: E402

from pages import _shared  # noqa: E402

st.set_page_config(page_title="eNTK Explorer", page_icon="📉", layout="wide")

PAGES = [
    st.Page("pages/1_Spectrum.py", title="Spectrum", icon="📉", url_path="spectrum", default=True),
]

nav = st.navigation(PAGES)
st.sidebar.title("eNTK Explorer")
_shared.sidebar()
nav.run()
