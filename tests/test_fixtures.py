"""The sample records ship with the repository, and a missing one is an error that names it (never a skip)."""

from __future__ import annotations

import orjson
import pytest

from emulators import fixtures
from emulators.office365.config import EmulatorConfig
from emulators.office365.content import ContentStore
from emulators.process import ROOT


def test_every_fixture_file_is_in_the_repository_with_its_records():
    o365, eventhub = fixtures.o365_records(), fixtures.eventhub_records()
    assert {name: len(lines) for name, lines in o365.items()} == {
        "Audit.AzureActiveDirectory": 24, "Audit.Exchange": 22, "Audit.General": 30, "Audit.SharePoint": 30,
        "DLP.All": 12}
    assert sum(map(len, eventhub.values())) == 29
    for category, lines in eventhub.items():
        assert {orjson.loads(line)["category"] for line in lines} == {category}
    assert fixtures.DIR.is_relative_to(ROOT)  # a clone needs nothing beside it
    assert (fixtures.DIR / "README.md").read_text().count("Elastic License 2.0") >= 1


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(fixtures.FixtureMissing, match=str(tmp_path / "Absent.ndjson")):
        fixtures.read_lines(tmp_path / "Absent.ndjson")


def test_a_file_without_records_is_an_error_naming_it(tmp_path):
    path = tmp_path / "Blank.ndjson"
    path.write_bytes(b"\n  \n")
    with pytest.raises(fixtures.FixtureMissing, match="holds no record: .*Blank.ndjson"):
        fixtures.read_lines(path)


def test_the_office365_emulator_names_the_fixture_it_lacks(tmp_path):
    for content_type in fixtures.O365_CONTENT_TYPES[:-1]:
        name = f"{content_type}.ndjson"
        (tmp_path / name).write_bytes((fixtures.O365_DIR / name).read_bytes())
    with pytest.raises(fixtures.FixtureMissing, match="DLP.All.ndjson"):
        ContentStore.build(EmulatorConfig(fixtures_dir=str(tmp_path)))
