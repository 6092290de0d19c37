# eNTK Explorer dashboard. Build: docker build -t entk-explorer .
# Run:   docker run --rm -p 127.0.0.1:8501:8501 -v "$PWD/runs:/app/runs" entk-explorer
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ENTK_RUNS_DIR=/app/runs \
    ENTK_CACHE_DIR=/home/entk/.cache/entk

WORKDIR /app
COPY requirements.txt .
# torch 2.13.0's CPU wheel comes from the PyTorch CPU index (the default index ships the CUDA build).
# The project itself (`-e .`) is not installed: the app runs from /app, whose pyproject.toml
# declares the built-in model families (read directly when the package is not installed).
RUN grep -v '^-e ' requirements.txt > /tmp/requirements.txt \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt

RUN useradd --create-home --uid 10001 entk \
    && mkdir -p /app/runs \
    && chown entk:entk /app/runs
COPY --chown=entk:entk . .

USER 10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"]
# Inside the container the server must listen on all interfaces so the published port reaches it;
# publish it on the host's loopback only (-p 127.0.0.1:8501:8501) unless you put an authenticating proxy in front.
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
