"""deploy/compose.yaml and what it mounts, checked without a Docker engine: service wiring,
secrets (and their generator), the files each container expects, and `docker compose config`
when a compose binary is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def compose() -> dict[str, Any]:
    """The compose file, YAML merge keys resolved."""
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return doc


def service(name: str) -> dict[str, Any]:
    """One service's definition."""
    svc: dict[str, Any] = compose()["services"][name]
    return svc


def mounts(name: str) -> dict[str, str]:
    """A service's bind mounts and volumes: container path -> host path or volume name."""
    result = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        result[target] = source
    return result


def test_collector_starts_after_migrations_which_start_after_postgres() -> None:
    """postgres (healthy) -> migrate (completed) -> collector run --no-migrate."""
    assert service("migrate")["command"] == ["migrate"]
    assert service("migrate")["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert service("migrate")["restart"] == "no"
    assert service("collector")["command"] == ["run", "--no-migrate"]
    assert service("collector")["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}
    }
    for name in ("migrate", "collector"):
        svc = service(name)
        assert svc["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert svc["environment"]["COLLECTOR_DATABASE_DSN_FILE"] == "/run/secrets/collector_dsn"
        assert "collector_dsn" in svc["secrets"]
        assert mounts(name)["/etc/collector/collector.toml"] == "./collector.toml"
        assert svc["environment"]["COLLECTOR_CONFIG"] == "/etc/collector/collector.toml"
        assert svc["read_only"] is True


def test_stop_grace_period_covers_the_drain(tmp_path: Path) -> None:
    """compose waits longer than the collector's shutdown_grace_s before killing it."""
    config = load_config(api_token_at(tmp_path), DEPLOY / "collector.toml")
    grace = service("collector")["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace)
    assert int(grace[:-1]) >= config.shutdown_grace_s + 5
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9108)


def api_token_at(directory: Path) -> dict[str, str]:
    """The environment that points [http] api_token_file at a token in `directory` (the
    stack's own path, /run/secrets/collector_api_token, exists only in the container)."""
    token = directory / "collector_api_token"
    token.write_text("t" * 32)
    return {"COLLECTOR_HTTP_API_TOKEN_FILE": str(token)}


def test_the_data_out_api_is_on_behind_the_generated_token(tmp_path: Path) -> None:
    """The image turns /v1 off; the stack turns it on, with the token from the secret that
    generate.sh writes, mounted into the collector's container."""
    secret = "/run/secrets/collector_api_token"
    assert (
        tomllib.loads((DEPLOY / "collector.toml").read_text())["http"]["api_token_file"] == secret
    )
    assert service("collector")["environment"]["COLLECTOR_HTTP_API_ENABLED"] == "true"
    assert "collector_api_token" in service("collector")["secrets"]
    assert compose()["secrets"]["collector_api_token"] == {"file": "./secrets/collector_api_token"}
    config = load_config(api_token_at(tmp_path), DEPLOY / "collector.toml")
    assert (config.http.api_enabled, config.http.api_token_file) == (
        True, str(tmp_path / "collector_api_token")
    )  # fmt: skip


def test_the_collector_spills_to_a_named_volume() -> None:
    """Rows the database could not take before a shutdown outlive the container."""
    assert mounts("collector")["/var/lib/collector"] == "spill"
    assert "spill" in compose()["volumes"]


def test_postgres_keeps_data_in_a_volume_and_creates_the_roles_on_first_start() -> None:
    """A named data volume, the init scripts mounted, every password from a secret."""
    pg = service("postgres")
    assert mounts("postgres")["/var/lib/postgresql/data"] in compose()["volumes"]
    assert mounts("postgres")["/docker-entrypoint-initdb.d"] == "./postgres/init"
    init = DEPLOY / "postgres" / "init"
    assert sorted(p.name for p in init.iterdir()) == ["10-roles.sh", "roles.psql"]
    assert os.access(init / "10-roles.sh", os.X_OK)
    script = (init / "10-roles.sh").read_text(encoding="utf-8")
    for secret in ("collector_db_password", "grafana_db_password"):
        assert f"/run/secrets/{secret}" in script
        assert secret in pg["secrets"]
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "-v collector_role=collector -v reader_role=grafana_reader" in script


def test_prometheus_scrapes_the_collector_with_the_alert_rules() -> None:
    """The mounted Prometheus config scrapes collector:9108 as job "collector" and loads alerts."""
    assert mounts("prometheus")["/etc/prometheus"] == "./prometheus"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["collector"]["static_configs"] == [{"targets": ["collector:9108"]}]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service("prometheus")["command"]


def test_grafana_provisioning_matches_the_dashboards_and_roles() -> None:
    """Data source uids, the reader role, its password secret and the dashboards path line up."""
    grafana = service("grafana")
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts("grafana")["/etc/grafana/provisioning"] == "./grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yaml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    pg = by_uid["collector-postgres"]
    assert (pg["type"], pg["url"], pg["user"]) == (
        "grafana-postgresql-datasource", "postgres:5432", "grafana_reader",
    )  # fmt: skip
    assert pg["jsonData"]["database"] == service("postgres")["environment"]["POSTGRES_DB"]
    secret = re.fullmatch(r"\$__file\{/run/secrets/(\w+)\}", pg["secureJsonData"]["password"])
    assert secret is not None
    assert secret[1] in grafana["secrets"]
    assert by_uid["collector-prometheus"]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts("grafana")[path] == "./grafana/dashboards"
    used = set()
    for file in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        used |= set(re.findall(r'"uid": "(collector-[a-z]+)"', file.read_text()))
        assert json.loads(file.read_text())["uid"].startswith("collector-")
    assert {"collector-postgres", "collector-prometheus"} <= used
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()


def test_every_host_path_exists_and_ports_stay_on_loopback() -> None:
    """Bind-mounted paths exist in the repository; published ports listen on 127.0.0.1 only."""
    for name, svc in compose()["services"].items():
        for source in mounts(name).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def run_generator(directory: Path) -> str:
    """Run a copy of deploy/secrets/generate.sh in `directory`; return its output."""
    shutil.copy(DEPLOY / "secrets" / "generate.sh", directory)
    return subprocess.run(
        [str(directory / "generate.sh")], capture_output=True, text=True, check=True
    ).stdout


def test_secret_generator_creates_every_compose_secret_once(tmp_path: Path) -> None:
    """generate.sh makes each file compose.yaml names, readable in containers, and keeps them."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    run_generator(secrets)
    expected = {Path(s["file"]).name for s in compose()["secrets"].values()}
    assert {p.name for p in secrets.iterdir()} - {"generate.sh"} == expected
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for name in expected:
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o644, name
    password = (secrets / "collector_db_password").read_text()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert (secrets / "collector_dsn").read_text() == (
        f"postgresql://collector:{password}@postgres:5432/collector"
    )
    before = {p.name: p.read_text() for p in secrets.iterdir()}

    out = run_generator(secrets)

    assert {p.name: p.read_text() for p in secrets.iterdir()} == before
    assert out.count("kept") == len(expected)


def compose_cli() -> list[str] | None:
    """A working `docker compose` (v2) or `docker-compose` (v1) command, if any."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(compose_cli() is None, reason="no docker compose / docker-compose installed")
def test_compose_config_validates(tmp_path: Path) -> None:
    """`docker compose config` accepts the file (v1 validates a copy without the v2-only `name`)."""
    cli = compose_cli()
    assert cli is not None
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("collector_*", "*password"))
    run_generator(deploy / "secrets")
    text = (deploy / "compose.yaml").read_text()
    if cli[0].endswith("docker-compose"):
        text = re.sub(r"(?m)^name: .*\n", "", text)
    (deploy / "compose.yaml").write_text(text)
    result = subprocess.run(
        [*cli, "-f", str(deploy / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
