"""The packaging rules every Sekoia module is checked against (the Sekoia module contract, its packaging section)."""

import ast
import importlib
import json
import re
import struct
from pathlib import Path

import jsonschema
import pytest

from connectors.trigger import CollectorTrigger

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = {"Applicative", "Cloud Providers", "Collaboration Tools", "Email", "Endpoint", "Generic", "IAM",
              "Network", "Threat Intelligence"}
SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def load(name):
    return json.loads((ROOT / name).read_text())


def item_files():
    return sorted(ROOT.glob("trigger_*.json")) + sorted(ROOT.glob("connector_*.json"))


def check_schema(schema, where):
    jsonschema.Draft7Validator.check_schema(schema)
    for secret in schema.get("secrets", []):
        assert secret in schema.get("properties", {}), f"{where}: secret {secret} is not a property"


def test_manifest():
    manifest = load("manifest.json")
    assert UUID.match(manifest["uuid"])
    assert manifest["name"] and manifest["description"]
    assert re.match(r"^[a-z]([a-z_.\-]|\d)*$", manifest["slug"])
    assert SEMVER.match(manifest["version"])
    assert set(manifest["categories"]) <= CATEGORIES and "Cloud Providers" in manifest["categories"]
    check_schema(manifest["configuration"], "manifest")


@pytest.mark.parametrize("path", item_files(), ids=lambda p: p.name)
def test_item_description(path):
    item = json.loads(path.read_text())
    for key in ("name", "uuid", "description", "docker_parameters", "arguments", "results"):
        assert item.get(key) not in (None, ""), f"{path.name}: {key} missing"
    assert UUID.match(item["uuid"])
    check_schema(item["arguments"], path.name)
    assert "secrets" in item["arguments"]
    jsonschema.Draft7Validator.check_schema(item["results"])


def test_uuids_unique_and_connector_twins_match():
    triggers = {p.name[len("trigger_"):]: json.loads(p.read_text()) for p in ROOT.glob("trigger_*.json")}
    connectors = {p.name[len("connector_"):]: json.loads(p.read_text()) for p in ROOT.glob("connector_*.json")}
    assert triggers.keys() == connectors.keys(), "every collecting trigger ships its connector twin"
    uuids = [load("manifest.json")["uuid"]] + [t["uuid"] for t in triggers.values()]
    assert len(uuids) == len(set(uuids))

    def without_titles(value):
        if isinstance(value, dict):
            return {k: without_titles(v) for k, v in value.items() if k != "title"}
        if isinstance(value, list):
            return [without_titles(v) for v in value]
        return value

    for name, trigger in triggers.items():
        assert without_titles(trigger) == without_titles(connectors[name]), name


def test_expected_triggers_and_main_registers_each_once():
    """main.py read as Sekoia's tooling reads it: its syntax tree, not its behaviour. Every trigger's
    docker_parameters is registered exactly once by a ``module.register(Class, "<literal>")`` call, and the class
    named there is the trigger's."""
    parameters = {json.loads(p.read_text())["docker_parameters"]: json.loads(p.read_text())["name"]
                  for p in ROOT.glob("trigger_*.json")}
    assert parameters == {"office365_management_api": "Office 365 Management API",
                          "consume_eventhub_messages": "Consume EventHub messages"}
    tree = ast.parse((ROOT / "main.py").read_text())
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "register" and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "module"]
    registered = {}
    for call in calls:
        assert len(call.args) == 2 and isinstance(call.args[1], ast.Constant), ast.unparse(call)
        assert isinstance(call.args[1].value, str) and isinstance(call.args[0], ast.Name), ast.unparse(call)
        assert call.args[1].value not in registered, f"{call.args[1].value} registered twice"
        registered[call.args[1].value] = call.args[0].id
    assert sorted(registered) == sorted(parameters)
    for class_name in registered.values():
        trigger = getattr(importlib.import_module(imported[class_name]), class_name)
        assert issubclass(trigger, CollectorTrigger), class_name


def test_changelog_matches_manifest_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# Changelog"
    assert "All notable changes" in text and "Keep a Changelog" in text
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, re.M)
    assert releases, "one dated heading per release"
    assert releases[0][0] == load("manifest.json")["version"]
    assert [r[1] for r in releases] == sorted((r[1] for r in releases), reverse=True)


def test_logo_is_a_small_square_png():
    data = (ROOT / "logo.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) <= 50 * 1024
    width, height = struct.unpack(">II", data[16:24])
    assert width == height


def test_project_files_and_json_indent():
    for name in ("pyproject.toml", "poetry.lock", "Dockerfile", "README.md", "package.json", "package-lock.json"):
        assert (ROOT / name).is_file(), name
    assert list((ROOT / "tests").glob("test_*.py"))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in dockerfile and "USER " in dockerfile and "poetry.lock" in dockerfile
    assert 'ENTRYPOINT ["python", "main.py"]' in dockerfile
    for path in ROOT.glob("*.json"):
        if path.name == "package-lock.json":
            continue
        text = path.read_text()
        assert text.rstrip("\n") == json.dumps(json.loads(text), indent=2, ensure_ascii=False), path.name
