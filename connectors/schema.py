"""The ``trigger_*.json`` and ``connector_*.json`` files, generated from the triggers' configuration models.

``python -m connectors.schema`` (``make schemas``) writes them; ``--check`` only names the files that differ, and
tests/test_schemas.py fails the same way. Edit the models, never the JSON files. An argument schema is pydantic's
JSON schema of the configuration model, reshaped the way Sekoia's module checks and UI expect it:

- the trigger's own fields first, the delivery settings every collector shares (``CollectorConfiguration``) last;
- a ``title`` only where the field sets one (pydantic's made-up titles, "Tenant Id", are dropped);
- an optional field shown with its type alone (no ``null`` branch), and every default, default factories included;
- ``secrets`` from the model's ``secret_fields``, the same list that keeps those values out of the logs.

A model hides a field from the schema with pydantic's model-level ``json_schema_extra``. A connector twin carries
the same content as its trigger.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from connectors.trigger import CollectorConfiguration

ROOT = Path(__file__).resolve().parent.parent
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
# The order a reader of the JSON expects; other keywords follow in pydantic's order.
KEY_ORDER = ("type", "title", "items", "enum", "uniqueItems", "format", "minimum", "exclusiveMinimum", "maximum",
             "default", "description")


@dataclass(frozen=True)
class Item:
    file_stem: str  # trigger_<file_stem>.json and connector_<file_stem>.json
    name: str
    uuid: str
    description: str


# docker_parameters -> what Sekoia shows of the trigger; main.py's registration gives its class, hence its model.
ITEMS = {
    "office365_management_api": Item(
        "office365_management_api",
        "Office 365 Management API",
        "4c0e9f3a-6b1d-4e27-8f5a-91d2c7b3a804",
        "Collect every audit record of an Office 365 tenant through the Office 365 Management Activity API (Azure AD, "
        "Exchange, SharePoint, General and DLP content types).",
    ),
    "consume_eventhub_messages": Item(
        "azure_eventhub",
        "Consume EventHub messages",
        "b8e2d51c-7a4f-4c9e-a3b6-0f19e6d2c7a5",
        "Consume the records that Microsoft diagnostic settings stream to an Azure event hub and forward them, "
        "checkpointed in Azure Blob Storage (several instances share the partitions) or, for a single instance, in "
        "the trigger's local state.",
    ),
}

# Without an intake key, CollectorTrigger sends each batch to the playbook as a file of records.
RESULTS = {
    "$schema": DRAFT_07,
    "type": "object",
    "title": "Records sent to the playbook (when no intake key is configured)",
    "properties": {
        "records_path": {
            "type": "string",
            "description": "Name of the JSON file, in the event's directory, holding the list of records",
        }
    },
}


def _property_name(name: str, field: FieldInfo) -> str:
    """The key pydantic's schema uses for a field: its (first) validation alias, else its alias or name."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    return alias if isinstance(alias, str) else (field.alias or name)


def _property(spec: dict, field: FieldInfo) -> dict:
    spec = dict(spec)
    branches = [branch for branch in spec.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        spec = {**branches[0], **spec}
    elif branches:
        spec["anyOf"] = branches
    spec.pop("default", None)
    if spec.get("format") == "password":  # a SecretStr: the `secrets` list says so, the form shows a string
        spec.pop("format")
        spec.pop("writeOnly", None)
    if field.title is None:
        spec.pop("title", None)
    if not field.is_required():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, float) and default.is_integer():
            default = int(default)  # the form shows 30, not 30.0
        if default is not None:
            spec["default"] = to_jsonable_python(default)
    return _ordered(spec)


def _ordered(spec: dict) -> dict:
    if isinstance(spec.get("items"), dict):
        spec = {**spec, "items": _ordered(spec["items"])}
    return {**{key: spec[key] for key in KEY_ORDER if key in spec}, **spec}


def argument_schema(model: type[CollectorConfiguration], title: str) -> dict:
    generated = model.model_json_schema(mode="validation")
    if "$defs" in generated:
        raise ValueError(f"{model.__name__}: a field refers to a nested type ({', '.join(generated['$defs'])}); "
                         "the module's schemas keep every property inline: use a Literal or a plain type")
    shared = CollectorConfiguration.model_fields
    fields = {name: field for name, field in model.model_fields.items() if name not in shared}
    fields.update((name, field) for name, field in model.model_fields.items() if name in shared)
    unknown = set(model.secret_fields) - set(model.model_fields)
    if unknown:
        raise ValueError(f"{model.__name__}.secret_fields names no field: {', '.join(sorted(unknown))}")
    properties: dict[str, dict] = {}
    secrets: list[str] = []
    for name, field in fields.items():
        key = _property_name(name, field)
        if key not in generated["properties"]:
            continue  # hidden by the model
        properties[key] = _property(generated["properties"][key], field)
        if name in model.secret_fields:
            secrets.append(key)
    return {
        "$schema": DRAFT_07,
        "type": "object",
        "title": title,
        "properties": properties,
        "required": [key for key in generated.get("required", []) if key in properties],
        "secrets": secrets,
    }


def registrations(main: Path = ROOT / "main.py") -> dict[str, tuple[str, str]]:
    """docker_parameters -> (module, class) of each literal ``module.register(Class, "parameters")`` of main.py,
    read as Sekoia's tooling reads them (the syntax tree, nothing run)."""
    tree = ast.parse(main.read_text())
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Name)
                and isinstance(node.args[1], ast.Constant)):
            found[node.args[1].value] = (imported[node.args[0].id], node.args[0].id)
    return found


def _models() -> dict[str, type[CollectorConfiguration]]:
    triggers = registrations()  # the entry point's registrations: docker_parameters -> class
    if set(triggers) != set(ITEMS):
        raise ValueError(f"main.py registers {sorted(triggers)} and ITEMS {sorted(ITEMS)}: they must name the same "
                         "triggers")
    return {
        parameters: getattr(importlib.import_module(path), class_name).configuration_model
        for parameters, (path, class_name) in triggers.items()
    }


def render(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file under ``root`` and its text (indented by 2, with a trailing newline)."""
    files = {}
    for parameters, model in _models().items():
        item = ITEMS[parameters]
        document = {
            "name": item.name,
            "uuid": item.uuid,
            "description": item.description,
            "docker_parameters": parameters,
            "arguments": argument_schema(model, item.name),
            "results": RESULTS,
        }
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        for kind in ("trigger", "connector"):
            files[root / f"{kind}_{item.file_stem}.json"] = text
    return files


def stale(root: Path = ROOT) -> list[str]:
    """Names of the files under ``root`` that differ from what the models generate (or are missing)."""
    return sorted(
        path.name
        for path, text in render(root).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"{name} differs from the models: run `make schemas`", file=sys.stderr)
        return 1 if names else 0
    for path, text in render().items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
