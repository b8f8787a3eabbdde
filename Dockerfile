# syntax=docker/dockerfile:1.7
# Build: a wheel and the pinned server dependencies in a throwaway stage; run: a slim, non-root image.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/aigos
# server.lock holds the otel extra too: traces stay off until OTEL_EXPORTER_OTLP_ENDPOINT is set.
COPY requirements/server.lock requirements/server.lock
RUN /opt/aigos/bin/pip install -r requirements/server.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/aigos/bin/pip install --no-deps .

FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="aigos" \
      org.opencontainers.image.description="Identity and governance control plane for AI agents" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 aigos \
 && useradd --system --uid 10001 --gid aigos --home-dir /var/lib/aigos --create-home aigos
COPY --from=build /opt/aigos /opt/aigos
ENV PATH=/opt/aigos/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIGOS_DATA_DIR=/var/lib/aigos \
    AIGOS_HOST=0.0.0.0 \
    AIGOS_PORT=8000
USER aigos
WORKDIR /var/lib/aigos
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
# Exec form: the server is PID 1 and receives SIGTERM itself, so `docker stop` drains requests gracefully.
ENTRYPOINT ["aigos"]
CMD ["serve"]
