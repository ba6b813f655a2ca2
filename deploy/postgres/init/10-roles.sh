#!/usr/bin/env bash
# Runs once, on the first start of the postgres container (/docker-entrypoint-initdb.d), as the
# superuser: creates the `collector` and `grafana_reader` roles (see roles.psql). Passwords come
# from the compose secrets and reach psql through its environment, never its command line.
set -euo pipefail
COLLECTOR_DB_PASSWORD="$(cat /run/secrets/collector_db_password)" \
GRAFANA_DB_PASSWORD="$(cat /run/secrets/grafana_db_password)" \
psql --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v ON_ERROR_STOP=1 -v collector_role=collector -v reader_role=grafana_reader \
    -v dbname="$POSTGRES_DB" -f /docker-entrypoint-initdb.d/roles.psql
