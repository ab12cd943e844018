"""Configuration of the Office 365 trigger: refused at start with the field named, and its argument schema."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.errors import ConfigurationError
from connectors.trigger import parse_configuration
from office365.config import (
    CONTENT_TYPES,
    Office365Configuration,
    resolve_credential,
    resolve_endpoints,
)

ROOT = Path(__file__).resolve().parent.parent
TENANT = "4f6e2a1c-8d3b-4e5f-9a7c-2b1d0e3f4a5b"
CLIENT = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def parse(**values) -> Office365Configuration:
    return parse_configuration(Office365Configuration, {"tenant_id": TENANT, "client_id": CLIENT, **values})


@pytest.fixture(scope="module")
def certificate() -> tuple[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("office365-trigger.test")
    return cert.cert_chain_pems[0].bytes().decode(), cert.private_key_pem.bytes().decode()


def test_defaults_collect_all_five_content_types_of_the_enterprise_cloud():
    config = parse(client_secret="s3cret-value")
    assert config.content_types == list(CONTENT_TYPES)
    assert "DLP.All" in config.content_types
    endpoints = resolve_endpoints(config)
    assert endpoints.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert endpoints.scope == "https://manage.office.com/.default"
    assert endpoints.feed == f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed"
    assert endpoints.publisher_identifier == TENANT
    assert not endpoints.custom_login


@pytest.mark.parametrize(
    "cloud, login, resource",
    [
        ("gcc", "https://login.microsoftonline.com", "https://manage-gcc.office.com"),
        ("gcc_high", "https://login.microsoftonline.us", "https://manage.office365.us"),
        ("DoD", "https://login.microsoftonline.us", "https://manage.protection.apps.mil"),
        ("GCC-High", "https://login.microsoftonline.us", "https://manage.office365.us"),
    ],
)
def test_clouds_map_to_their_authority_and_api_host(cloud, login, resource):
    endpoints = resolve_endpoints(parse(cloud=cloud, client_secret="s3cret-value"))
    assert endpoints.authority.startswith(login + "/")
    assert endpoints.scope == resource + "/.default"
    assert endpoints.feed.startswith(resource + "/api/v1.0/")


def test_overrides_keep_the_cloud_resource_and_accept_api_roots():
    config = parse(
        client_secret="s3cret-value",
        login_url="https://127.0.0.1:8443/",
        management_url="https://127.0.0.1:8443",
        publisher_identifier="0A1B2C3D-4E5F-6A7B-8C9D-0E1F2A3B4C5D",
    )
    endpoints = resolve_endpoints(config)
    assert endpoints.authority == f"https://127.0.0.1:8443/{TENANT}"
    assert endpoints.feed == f"https://127.0.0.1:8443/api/v1.0/{TENANT}/activity/feed"
    assert endpoints.scope == "https://manage.office.com/.default"
    assert endpoints.publisher_identifier == "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
    assert endpoints.custom_login
    root = parse(client_secret="x" * 8, management_url=f"https://proxy.example/api/v1.0/{TENANT}/activity/feed")
    assert resolve_endpoints(root).feed == f"https://proxy.example/api/v1.0/{TENANT}/activity/feed"


def test_content_types_are_normalised_deduplicated_and_accept_a_comma_list():
    config = parse(client_secret="s", content_types="audit.exchange, DLP.ALL,Audit.Exchange")
    assert config.content_types == ["Audit.Exchange", "DLP.All"]


@pytest.mark.parametrize(
    "values, field",
    [
        ({"tenant_id": "contoso.onmicrosoft.com"}, "tenant_id"),
        ({"client_id": "my-app"}, "client_id"),
        ({"content_types": ["Audit.Exchange", "Audit.Teams"]}, "content_types"),
        ({"cloud": "china"}, "cloud"),
        ({"management_url": "http://manage.office.com"}, "management_url"),
        ({"publisher_identifier": "not-a-guid"}, "publisher_identifier"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(values, field):
    with pytest.raises(ConfigurationError) as caught:
        parse(client_secret="s3cret-value", **values)
    assert caught.value.field == field
    assert f"`{field}`" in str(caught.value)


def test_unknown_content_type_message_lists_the_valid_ones():
    with pytest.raises(ConfigurationError) as caught:
        parse(client_secret="s", content_types=["Audit.Teams"])
    assert "Audit.Teams" in str(caught.value) and "DLP.All" in str(caught.value)


def test_a_missing_tenant_is_required():
    with pytest.raises(ConfigurationError) as caught:
        parse_configuration(Office365Configuration, {"client_id": CLIENT, "client_secret": "s"})
    assert caught.value.field == "tenant_id"


def test_no_credential_names_client_secret():
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(parse())
    assert caught.value.field == "client_secret"


def test_secret_credential():
    assert resolve_credential(parse(client_secret="s3cret-value")).for_msal() == "s3cret-value"


def test_certificate_credential_gives_msal_the_key_and_certificate(certificate):
    cert_pem, key_pem = certificate
    credential = resolve_credential(parse(certificate=cert_pem, private_key=key_pem))
    given = credential.for_msal()
    assert "PRIVATE KEY" in given["private_key"] and "CERTIFICATE" in given["public_certificate"]


def test_encrypted_private_key_needs_its_password(certificate):
    cert_pem, key_pem = certificate
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw-1234")
    ).decode()
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(parse(certificate=cert_pem, private_key=encrypted))
    assert caught.value.field == "private_key_password"
    credential = resolve_credential(parse(certificate=cert_pem, private_key=encrypted, private_key_password="pw-1234"))
    assert "ENCRYPTED" not in credential.private_key_pem


@pytest.mark.parametrize("which", ["certificate", "private_key"])
def test_certificate_that_does_not_parse_is_refused(certificate, which):
    cert_pem, key_pem = certificate
    values = {
        "certificate": cert_pem,
        "private_key": key_pem,
        which: "-----BEGIN GARBAGE-----\nabc\n-----END GARBAGE-----",
    }
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(parse(**values))
    assert caught.value.field == which


def test_private_key_of_another_certificate_is_refused(certificate):
    cert_pem, _ = certificate
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(parse(certificate=cert_pem, private_key=other_pem))
    assert caught.value.field == "private_key"
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(parse(certificate=cert_pem))
    assert caught.value.field == "private_key"


def test_secrets_are_declared_for_redaction():
    assert {"client_secret", "private_key", "private_key_password", "intake_key"} <= set(
        Office365Configuration.secret_fields
    )


# -- the argument schema shipped with the module -------------------------------------------------------------


def _manifest(name: str) -> dict:
    return json.loads((ROOT / name).read_text())


def test_trigger_and_connector_manifests_are_identical_and_indented_by_two():
    trigger = (ROOT / "trigger_office365_management_api.json").read_text()
    assert trigger == (ROOT / "connector_office365_management_api.json").read_text()
    assert trigger == json.dumps(json.loads(trigger), indent=2, ensure_ascii=False) + "\n"


def test_argument_schema_is_draft_7_and_matches_the_model():
    import jsonschema

    manifest = _manifest("trigger_office365_management_api.json")
    assert manifest["docker_parameters"] == "office365_management_api"
    schema = manifest["arguments"]
    jsonschema.Draft7Validator.check_schema(schema)
    model_fields = set(Office365Configuration.model_fields)
    assert set(schema["properties"]) == model_fields
    assert set(schema["secrets"]) == set(Office365Configuration.secret_fields)
    assert set(schema["required"]) == {"tenant_id", "client_id"}
    assert schema["properties"]["content_types"]["items"]["enum"] == list(CONTENT_TYPES)
    for name, spec in schema["properties"].items():
        default = Office365Configuration.model_fields[name].get_default(call_default_factory=True)
        if "default" in spec:
            assert spec["default"] == default, name
    valid = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": "s", "content_types": ["DLP.All"]}
    jsonschema.validate(valid, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**valid, "content_types": ["Audit.Teams"]}, schema)


def test_secret_and_certificate_not_both_needed_at_validation(certificate):
    # Secrets may reach the trigger after its configuration (the runtime's secrets endpoint): the model alone
    # does not insist on them; resolve_credential does, at start.
    assert parse().client_secret is None
    assert datetime.timedelta(hours=parse().initial_lookback_hours) == datetime.timedelta(days=7)
