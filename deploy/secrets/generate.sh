#!/usr/bin/env bash
# Creates the compose stack's secrets in this directory, once: random passwords for the
# PostgreSQL superuser, the `collector` and `grafana_reader` roles and Grafana's admin, the
# collector's DSN, and the bearer token of the collector's data-out API (/v1 and the page). Existing files are never overwritten, so running it again is harmless.
#
# The directory is private to you (0700); the files are 0644 because compose bind-mounts them
# into containers whose users (postgres, grafana, the collector's uid 10001) must read them.
set -euo pipefail
cd "$(dirname "$0")"
chmod 700 .

password() {  # 32 random letters and digits: safe in a URL without escaping
    local value=""
    while [ "${#value}" -lt 32 ]; do
        value+=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${value:0:32}"
}

create() {  # create NAME CONTENT
    if [ -s "$1" ]; then
        echo "kept    deploy/secrets/$1"
    else
        printf '%s' "$2" > "$1"  # no trailing newline: not every reader strips one
        chmod 644 "$1"
        echo "created deploy/secrets/$1"
    fi
}

for name in postgres_password collector_db_password grafana_db_password grafana_admin_password \
    collector_api_token; do
    create "$name" "$(password)"
done
create collector_dsn "postgresql://collector:$(<collector_db_password)@postgres:5432/collector"
