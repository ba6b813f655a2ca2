"""deploy/k8s, checked without a cluster: probes on the real health paths, termination grace
above the drain, secrets as files, selectors that match, and the restricted pod-security rules."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from collector.config import load_config

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


def manifests() -> dict[str, dict[str, Any]]:
    """The kustomization's resources by kind (one object each)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text(encoding="utf-8")):
            assert doc["kind"] not in objects
            objects[doc["kind"]] = doc
    return objects


def pod() -> dict[str, Any]:
    """The Deployment's pod spec."""
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as a dict."""
    return {e["name"]: e["value"] for e in container["env"]}


def test_kustomization_lists_every_manifest_and_sets_the_image() -> None:
    """Every YAML file here is a resource of the kustomization, which maps the image name."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert set(manifests()) == {
        "Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
    }  # fmt: skip
    assert [i["name"] for i in kustomization["images"]] == ["collector"]
    images = {c["image"] for c in pod()["containers"] + pod()["initContainers"]}
    assert images == {"collector"}


def test_probes_use_healthz_and_readyz_on_the_metrics_port() -> None:
    """Startup and liveness probe /healthz, readiness /readyz, all on the named port 9108."""
    (container,) = pod()["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 9108, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_termination_grace_covers_the_configured_drain() -> None:
    """terminationGracePeriodSeconds exceeds shutdown_grace_s, set alike in env and TOML."""
    (container,) = pod()["containers"]
    toml = manifests()["ConfigMap"]["data"]["collector.toml"]
    grace_env = float(env(container)["COLLECTOR_SHUTDOWN_GRACE_S"])
    assert tomllib.loads(toml)["shutdown_grace_s"] == grace_env
    assert pod()["terminationGracePeriodSeconds"] >= grace_env + 5


def test_configmap_loads_with_the_collector_loader(tmp_path: Path) -> None:
    """load_config() accepts the ConfigMap's TOML as the pod reads it: HTTP on 0.0.0.0:9108."""
    mounted = tmp_path / "collector.toml"
    mounted.write_text(manifests()["ConfigMap"]["data"]["collector.toml"], encoding="utf-8")
    config = load_config({}, mounted)
    assert (config.http.host, config.http.port, config.shutdown_grace_s) == ("0.0.0.0", 9108, 20)


def test_migrations_run_first_and_secrets_are_mounted_as_files() -> None:
    """An init container migrates; the DSN file is in the database Secret; API keys optional."""
    (init,) = pod()["initContainers"]
    (container,) = pod()["containers"]
    assert init["args"] == ["migrate"]
    assert container["args"] == ["run", "--no-migrate"]
    assert env(init) == env(container)
    # The daemon also mounts its spill directory (rows the database could not take at
    # shutdown); the migration step needs nothing else.
    assert container["volumeMounts"] == [
        *init["volumeMounts"],
        {"name": "spill", "mountPath": "/var/lib/collector"},
    ]
    volumes = {v["name"]: v for v in pod()["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    dsn = Path(env(container)["COLLECTOR_DATABASE_DSN_FILE"])
    assert volumes[mounts[str(dsn.parent)]]["secret"] == {
        "secretName": "collector-database", "defaultMode": 0o440,
    }  # fmt: skip
    assert volumes[mounts["/run/secrets/binance"]]["secret"]["optional"] is True
    assert volumes[mounts["/etc/collector"]]["configMap"]["name"] == "collector-config"
    assert env(container)["COLLECTOR_CONFIG"] == "/etc/collector/collector.toml"
    assert volumes["spill"]["emptyDir"] == {"sizeLimit": "1Gi"}


def test_service_and_disruption_budget_select_the_pods() -> None:
    """Service and PDB select the pod labels; one pod may go at a time out of two."""
    objects = manifests()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    service = objects["Service"]["spec"]
    assert service["selector"] == labels
    assert service["ports"] == [
        {"name": "http-metrics", "port": 9108, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["publishNotReadyAddresses"] is True
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] == labels
    assert pdb["minAvailable"] < objects["Deployment"]["spec"]["replicas"]
    rollout = objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert (rollout["maxSurge"], rollout["maxUnavailable"]) == (1, 0)


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    """Non-root uid 10001 (the image's USER), no privilege escalation, no capabilities, seccomp."""
    assert (
        manifests()["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )
    security = pod()["securityContext"]
    assert (security["runAsNonRoot"], security["runAsUser"], security["runAsGroup"]) == (
        True, 10001, 10001,
    )  # fmt: skip
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod()["containers"] + pod()["initContainers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert "memory" in container["resources"]["limits"]
    assert pod()["automountServiceAccountToken"] is False
