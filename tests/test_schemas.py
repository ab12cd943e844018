"""trigger_*.json and connector_*.json are generated from the configuration models (connectors/schema.py)."""

from __future__ import annotations

import shutil
from typing import ClassVar, Literal

import jsonschema
import pytest
from pydantic import ConfigDict, Field

from connectors import schema
from connectors.trigger import CollectorConfiguration


def test_committed_files_match_the_models():
    assert schema.stale() == [], "the JSON files drifted from the configuration models: run `make schemas`"


def test_a_hand_edited_or_missing_file_is_reported(tmp_path):
    for path in schema.render():
        shutil.copy(path, tmp_path / path.name)
    assert schema.stale(tmp_path) == []
    edited = tmp_path / "connector_azure_eventhub.json"
    edited.write_text(edited.read_text().replace('"default": 100', '"default": 101'))
    (tmp_path / "trigger_office365_management_api.json").unlink()
    assert schema.stale(tmp_path) == ["connector_azure_eventhub.json", "trigger_office365_management_api.json"]


def _drop_batch_age(generated: dict) -> None:
    generated["properties"].pop("batch_max_age_seconds")


class Sample(CollectorConfiguration):
    model_config = ConfigDict(json_schema_extra=_drop_batch_age)

    token: str = Field(title="Token", description="Required, secret")
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = Field(None, ge=1, le=10)
    wait: float = Field(30.0, gt=0)
    names: list[str] = Field(default_factory=lambda: ["a", "b"], json_schema_extra={"uniqueItems": True})

    secret_fields: ClassVar[tuple[str, ...]] = ("intake_key", "token")


def test_argument_schema_reshapes_pydantics_schema():
    arguments = schema.argument_schema(Sample, "Sample trigger")
    jsonschema.Draft7Validator.check_schema(arguments)
    properties = arguments["properties"]
    shared = [name for name in CollectorConfiguration.model_fields if name != "batch_max_age_seconds"]
    assert list(properties) == ["token", "mode", "limit", "wait", "names", *shared]
    assert properties["token"] == {"type": "string", "title": "Token", "description": "Required, secret"}
    assert properties["mode"] == {"type": "string", "enum": ["fast", "slow"], "default": "fast"}
    assert properties["limit"] == {"type": "integer", "minimum": 1, "maximum": 10}  # no null branch, no null default
    assert properties["wait"] == {"type": "number", "exclusiveMinimum": 0, "default": 30}
    assert properties["names"] == {"type": "array", "items": {"type": "string"}, "uniqueItems": True,
                                   "default": ["a", "b"]}
    assert arguments["required"] == ["token"]
    assert arguments["secrets"] == ["token", "intake_key"]
    assert arguments["title"] == "Sample trigger"
    jsonschema.validate({"token": "t", "limit": 3, "names": ["x"]}, arguments)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"token": "t", "limit": 11}, arguments)


def test_a_secret_that_names_no_field_is_an_error():
    class Misspelt(CollectorConfiguration):
        secret_fields: ClassVar[tuple[str, ...]] = ("intake_key", "pasword")

    with pytest.raises(ValueError, match="secret_fields names no field: pasword"):
        schema.argument_schema(Misspelt, "Misspelt")
