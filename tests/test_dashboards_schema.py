"""The provisioned dashboards against Grafana 11.2's own models (grafana-foundation-sdk, 11.2
release; the stack runs grafana-oss:11.2.0): each dashboard survives a round trip through the
models with nothing dropped or changed, every panel type and its options are known, every unit
is one of Grafana's, and every data source reference names a provisioned data source.

Not checked here (no Grafana server can be installed on the test machine): how Grafana renders a
panel, enum values inside options, and the PostgreSQL targets' own fields (the SDK has no model
for that data source; tests/test_dashboards.py runs their SQL instead)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog import runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.dashboard import Dashboard

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SCHEMA_VERSION = 39  # Grafana 11.2's dashboard schemaVersion
BUILTIN = {("grafana", "-- Grafana --")}  # the built-in annotations data source

register_default_plugins()


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def differences(original: Any, back: Any, path: str = "") -> list[str]:
    """Where `back` (the round trip) lost or changed something of `original`. Keys the models
    add with their defaults are not differences: Grafana fills the same defaults."""
    if isinstance(original, dict) and isinstance(back, dict):
        found = []
        for key, value in original.items():
            if key not in back:
                found.append(f"{path}.{key}: dropped (not in Grafana 11.2's model)")
            else:
                found += differences(value, back[key], f"{path}.{key}")
        return found
    if isinstance(original, list) and isinstance(back, list):
        if len(original) != len(back):
            return [f"{path}: {len(original)} items became {len(back)}"]
        return [d for i, pair in enumerate(zip(original, back, strict=True))
                for d in differences(*pair, f"{path}[{i}]")]  # fmt: skip
    if original != back or type(original) is not type(back):
        return [f"{path}: {original!r} became {back!r}"]
    return []


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_round_trips_through_grafana_models(path: Path) -> None:
    """Nothing dropped, nothing changed: every key is one Grafana 11.2 knows."""
    doc = load(path)
    back = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    assert differences(doc, back) == []
    assert doc["schemaVersion"] == SCHEMA_VERSION


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_panel_types_and_options_are_known(path: Path) -> None:
    """Every panel type has Grafana's options model (so unknown options would be dropped, and
    caught above); types without a field-config model carry no `custom` field config."""
    for panel in panels(load(path)):
        if panel["type"] == "row":
            assert "options" not in panel, panel["title"]
            continue
        config = runtime.panelcfg_config(panel["type"])
        assert config is not None, f"{panel['title']}: unknown panel type {panel['type']}"
        assert config.options_from_json_hook is not None, panel["type"]
        if config.field_config_from_json_hook is None:
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
            assert custom == {}, f"{panel['title']}: {panel['type']} has no custom field config"


GRAFANA_UNITS = {v for k, v in vars(units).items() if isinstance(v, str) and not k.startswith("_")}


def used_units(panel: dict[str, Any]) -> Iterator[str]:
    field_config = panel.get("fieldConfig", {})
    if "unit" in field_config.get("defaults", {}):
        yield field_config["defaults"]["unit"]
    for override in field_config.get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "unit":
                yield prop["value"]
    options = panel.get("options", {})
    for key in ("cellValues", "yAxis"):
        if "unit" in options.get(key, {}):
            yield options[key]["unit"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_units_are_grafana_units(path: Path) -> None:
    """Field, override, heatmap cell and axis units are all in Grafana's unit list."""
    for panel in panels(load(path)):
        for unit in used_units(panel):
            assert unit in GRAFANA_UNITS, f"{panel['title']}: unknown unit {unit!r}"


def provisioned() -> set[tuple[str, str]]:
    doc = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    return {(d["type"], d["uid"]) for d in doc["datasources"]}


def datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every `datasource` value anywhere in a dashboard, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield f"{path}.{key}", value
            else:
                yield from datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from datasource_refs(item, f"{path}[{i}]")


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_datasource_references_name_provisioned_datasources(path: Path) -> None:
    """Every reference is {type, uid} of a data source provisioned next to the dashboards."""
    known = provisioned() | BUILTIN
    refs = list(datasource_refs(load(path)))
    assert refs
    for where, ref in refs:
        assert isinstance(ref, dict), f"{where}: {ref!r} is not a {{type, uid}} reference"
        assert (ref.get("type"), ref.get("uid")) in known, f"{where}: dangling {ref!r}"
