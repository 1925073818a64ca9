# One image for every Driftline service; the command picks the service:
#   docker run driftline python -m services.serving
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY services ./services
COPY driftline ./driftline
COPY inference ./inference
COPY config ./config
RUN pip install .
USER nobody
CMD ["python", "-m", "services.serving"]
