# eNTK Explorer dashboard. Build: docker build -t entk-explorer .
# Run:   docker run --rm -p 127.0.0.1:8501:8501 -v "$PWD/runs:/app/runs" -v "$PWD/models:/app/models:ro" entk-explorer
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ENTK_RUNS_DIR=/app/runs \
    ENTK_MODELS_DIR=/app/models \
    ENTK_PROBES_DIR=/app/probes \
    ENTK_CACHE_DIR=/home/entk/.cache/entk

WORKDIR /app
COPY requirements.txt .
# torch 2.13.0's CPU wheel comes from the PyTorch CPU index first (PyPI's is the multi-GB CUDA
# build); the rest from PyPI, where the pinned torch is then already satisfied. The project's
# own line (`-e .`) waits until its source is copied in (below), so this layer stays cached.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==$(sed -n 's/^torch==//p' requirements.txt)" \
    && grep -v '^-e ' requirements.txt > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

RUN useradd --create-home --uid 10001 entk \
    && mkdir -p /app/runs /app/models /app/probes \
    && chown entk:entk /app/runs /app/probes
COPY --chown=entk:entk . .
# The package itself: its metadata declares the built-in model families (entry points),
# which is the only place the registry looks. Its dependencies are all installed above.
RUN pip install --no-deps . && rm -rf build entk_explorer.egg-info

USER 10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"]
# Inside the container the server must listen on all interfaces so the published port reaches it;
# publish it on the host's loopback only (-p 127.0.0.1:8501:8501) unless you put an authenticating proxy in front.
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
