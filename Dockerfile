# lookalike service image: the serve extra only (no torch, no training code) plus both shipped
# models: models/fashion-mnist (the default) and the colour model models/icons.
# Build: docker build -t lookalike .   Run: docker compose up
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
COPY client ./client
# The client too: `python -m service import` goes through it.
RUN /opt/venv/bin/pip install ".[serve]" ./client

FROM python:3.11-slim
# Fashion-MNIST from Debian seeds the demo gallery (LOOKALIKE_SEED_DEMO_GALLERY).
# The dataset is data only; its version follows the base image's Debian release.
# The icons demo gallery (LOOKALIKE_SEED_DEMO_GALLERY=icons) needs oxygen-icon-theme, 38 MB, so
# it is not installed here: mount the host's read-only (README: Deploying with Docker).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lookalike \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/lookalike \
        --shell /usr/sbin/nologin lookalike \
    && mkdir -p /data && chown lookalike:lookalike /data
COPY --from=build /opt/venv /opt/venv
COPY models/fashion-mnist/encoder.onnx models/fashion-mnist/model.json /app/models/fashion-mnist/
COPY models/icons/encoder.onnx models/icons/model.json /app/models/icons/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    LOOKALIKE_MODEL_DIR=/app/models/fashion-mnist \
    LOOKALIKE_DATA_DIR=/data
WORKDIR /app
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
