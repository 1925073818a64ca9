# One image for every Driftline service; the command picks the service:
#   docker run driftline python -m services.serving
# It runs as the unprivileged user `driftline` (uid 10001). Everything a service writes lives
# under /var/lib/driftline (registry/: the SQLite registry; spool/: serving's undelivered
# prediction logs; scratch/: temporary files), which docker-compose.yml mounts as volumes;
# nothing needs the local stack (.devstack/). gRPC, metrics and the monitor's dashboard bind
# 0.0.0.0 here (the settings' default is loopback), and
# `python -m services.common.healthcheck HOST:PORT [SERVICE]` is the health probe
# (grpc.health.v1; exit 0 only when SERVING).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The dependencies first, in a layer of their own: it is rebuilt only when pyproject.toml
# changes, not on every change to the code (torch alone is gigabytes).
COPY pyproject.toml README.md ./
RUN mkdir -p services driftline inference \
    && pip install . \
    && pip uninstall --yes driftline \
    && rm -rf build *.egg-info services driftline inference

COPY services ./services
COPY driftline ./driftline
COPY inference ./inference
COPY config ./config
RUN pip install --no-deps . && rm -rf build *.egg-info

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/driftline driftline \
    && mkdir -p /var/lib/driftline/registry /var/lib/driftline/spool /var/lib/driftline/scratch \
    && chown -R driftline:driftline /var/lib/driftline

ENV HOME=/home/driftline \
    DRIFTLINE_GRPC_HOST=0.0.0.0 \
    DRIFTLINE_METRICS_HOST=0.0.0.0 \
    DRIFTLINE_DASHBOARD_HOST=0.0.0.0 \
    DRIFTLINE_REGISTRY_DB=/var/lib/driftline/registry/registry.db

USER driftline:driftline
# gRPC: ingest 50051, feature 50052, registry 50053, serving 50054, monitor 50055;
# metrics 9100 (DRIFTLINE_METRICS_PORT); the monitor's dashboard 8055.
EXPOSE 50051 50052 50053 50054 50055 9100 8055
CMD ["python", "-m", "services.serving"]
