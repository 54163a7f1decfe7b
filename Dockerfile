# syntax=docker/dockerfile:1
# crm-stream container image: runs any `crm-stream` command (default: the Faust worker).
#
#   docker build -t crm-stream .
#   docker run --rm crm-stream settings
#   docker run --rm -e CRM_BOOTSTRAP_SERVERS=kafka:9092 crm-stream connect segment
#
# Two stages: the builder has compilers and turns the project and every dependency into wheels;
# the final stage only installs those wheels, so no compiler ships in the image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY crmstream ./crmstream
COPY connectors ./connectors
COPY processors ./processors
COPY crmcli ./crmcli
# setup.py ships copies of these inside the wheel (crmstream/resources.py).
COPY schemas/avro ./schemas/avro
COPY config ./config
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/var/lib/crm-stream \
    CRM_DATA_DIR=/var/lib/crm-stream \
    CRM_SCHEMA_DIR=/opt/crm-stream/schemas/avro \
    CRM_LOG_FORMAT=json
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --home-dir /var/lib/crm-stream \
       --shell /usr/sbin/nologin crm \
    && mkdir -p /var/lib/crm-stream \
    && chown crm:crm /var/lib/crm-stream
# Bind-mount the wheels instead of COPYing them: they never become a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    pip install --no-index --find-links=/tmp/wheels crm-stream
# The Avro schemas live outside the Python packages; the code finds them through CRM_SCHEMA_DIR.
COPY schemas/avro /opt/crm-stream/schemas/avro
USER 10001:10001
WORKDIR /var/lib/crm-stream
# 9108: Prometheus metrics (CRM_METRICS_PORT); 8080: the Segment webhook receiver.
EXPOSE 9108 8080
ENTRYPOINT ["crm-stream"]
CMD ["worker"]
