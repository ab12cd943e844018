"""Secrets stay secret outside the log handlers (issue 18): the configuration's secret settings are SecretStr (no
repr, dump or error shows them), and error reports to Sentry carry neither local variables nor a secret value."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from pydantic import SecretStr

from azure_eventhub.config import EventHubConfiguration
from connectors import schema
from connectors.logs import Redactor
from connectors.secrets import reveal, scrub_event
from office365.config import Office365Configuration, resolve_credential

ROOT = Path(__file__).resolve().parent.parent
GUID = "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
SECRETS = {
    "intake": "intake-key-9f8e7d6c",
    "client": "client~secret~Q1w2E3r4",
    "hub": "aHViLWtleS1zZWNyZXQtdmFsdWU=",
    "storage": "c3RvcmFnZS1rZXktc2VjcmV0LXZhbHVl",
    "password": "proxy-pass-77aa",
}


def office365_config() -> Office365Configuration:
    return Office365Configuration.model_validate({
        "tenant_id": GUID, "client_id": GUID, "client_secret": SECRETS["client"], "intake_key": SECRETS["intake"],
        "private_key_password": SECRETS["password"]})


def eventhub_config() -> EventHubConfiguration:
    return EventHubConfiguration.model_validate({
        "hub_connection_string": f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;"
                                 f"SharedAccessKey={SECRETS['hub']};EntityPath=logs",
        "storage_connection_string": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={SECRETS['storage']}",
        "storage_container_name": "checkpoints",
        "http_proxy": f"http://user:{SECRETS['password']}@proxy:3128",
        "intake_key": SECRETS["intake"],
    })


@pytest.mark.parametrize("make", [office365_config, eventhub_config])
def test_no_representation_of_a_configuration_shows_a_secret(make):
    config = make()
    for text in (repr(config), str(config), str(config.model_dump()), str(vars(config))):
        assert not any(secret in text for secret in SECRETS.values()), text
    for name in config.secret_fields:
        value = getattr(config, name)
        assert value is None or isinstance(value, SecretStr), name


def test_the_clients_still_get_the_values():
    config = office365_config()
    credential = resolve_credential(config)
    assert credential.client_secret == SECRETS["client"] and SECRETS["client"] not in repr(credential)
    hub = eventhub_config()
    assert hub.namespace_host == "ns.servicebus.windows.net" and hub.hub_name == "logs"
    assert reveal(hub.intake_key) == SECRETS["intake"]
    assert reveal("set by the SDK as a plain string") == "set by the SDK as a plain string"


@pytest.mark.parametrize("parameters", sorted(schema.ITEMS))
def test_the_arguments_still_say_strings_and_secrets(parameters):
    model = schema._models()[parameters]
    arguments = schema.argument_schema(model, "t")
    for name in model.secret_fields:
        spec = arguments["properties"][name]
        assert spec["type"] == "string" and "format" not in spec and "writeOnly" not in spec, (name, spec)
        assert name in arguments["secrets"]


def test_scrub_event_drops_local_variables_and_redacts_every_string():
    secret = SECRETS["client"]
    event = {
        "exception": {"values": [{"value": f"refused {secret}", "stacktrace": {"frames": [
            {"function": "f", "vars": {"secret": secret}}]}}]},
        "breadcrumbs": {"values": [{"message": f"connecting with {secret}", "data": {"args": [secret]}}]},
        "extra": {"nested": ({"deep": secret},)},
    }
    scrubbed = scrub_event(event, Redactor([secret]))
    assert secret not in json.dumps(scrubbed)
    assert "vars" not in scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert scrubbed["exception"]["values"][0]["value"] == "refused ***"


# -- Sentry, as the runtime configures it -----------------------------------------------------------------------

FAILING_TRIGGER = """
import logging, sys

import sentry_sdk
from sekoia_automation.module import Module

from connectors.secrets import reveal
from connectors.trigger import CollectorTrigger


class Failing(CollectorTrigger):
    def collect(self):
        intake_key = reveal(self.configuration.intake_key)  # a local variable of the failing frame
        logging.getLogger("some.client").warning("posting with key %s", intake_key)  # a breadcrumb
        raise RuntimeError(f"the intake refused {intake_key}")


module = Module()  # initialises Sentry from SENTRY_DSN, as the runtime does
module.register(Failing, "failing")
trigger = Failing(module)
trigger.stop()  # no wait before the restart that would follow the failure
trigger.run()  # logs the failure: CollectorTrigger.log_exception -> sentry_sdk.capture_exception
sentry_sdk.flush(10)
"""


class SentryReceiver:
    """A Sentry ingestion endpoint on loopback: the envelopes the SDK's own HTTP transport posts, decompressed."""

    def __init__(self):
        self.envelopes: list[bytes] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver.envelopes.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        found = []
        for envelope in self.envelopes:
            for line in envelope.splitlines():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and ("exception" in item or "message" in item or "logentry" in item):
                    found.append(item)
        return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_error_report_to_sentry_carries_no_secret_and_no_local_variables(runtime, tmp_path):
    receiver = SentryReceiver()
    try:
        script = tmp_path / "failing_trigger.py"
        script.write_text(FAILING_TRIGGER)
        env = {**os.environ, **runtime.env({"intake_key": SECRETS["intake"]}), "SENTRY_DSN": receiver.dsn,
               "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        events = receiver.events()
        exceptions = [event for event in events if "exception" in event]
        assert exceptions, [event.keys() for event in events]  # the report did reach Sentry
        frames = [frame for event in exceptions for value in event["exception"]["values"]
                  for frame in value["stacktrace"]["frames"]]
        assert any(frame["function"] == "collect" for frame in frames)  # the failing frame is there...
        assert not any("vars" in frame for frame in frames)  # ...without its local variables
        assert any("the intake refused ***" in value["value"] for event in exceptions
                   for value in event["exception"]["values"])
        everything = b"".join(receiver.envelopes) + result.stdout + result.stderr
        assert SECRETS["intake"].encode() not in everything
    finally:
        receiver.close()


def test_secrets_the_runtime_gives_stay_secret(tmp_path, monkeypatch):
    """Node-level secrets come from the runtime after validation, as plain strings (the SDK's setattr): made
    secret again, and used."""
    import signal

    from sekoia_automation.module import Module

    from connectors.sdk_internals import fetch_runtime_secrets_once  # what execute() does, asked once
    from connectors.trigger import CollectorTrigger
    from emulators.runtime.harness import Runtime

    class Plain(CollectorTrigger):
        def collect(self):
            pass

    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"intake_key": SECRETS["intake"]}))
    stub = Runtime(tmp_path / "runtime", "--secrets", str(secrets_file))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for key, value in stub.env({"intake_key": "placeholder-key"}).items():
            monkeypatch.setenv(key, value)
        trigger = Plain(Module())
        fetch_runtime_secrets_once(trigger)
        config = trigger.configuration
        assert isinstance(config.intake_key, SecretStr) and reveal(config.intake_key) == SECRETS["intake"]
        assert SECRETS["intake"] not in repr(config) and SECRETS["intake"] in trigger._secret_values()
    finally:
        stub.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
