"""``python main.py check <docker_parameters>`` (issue 18): each step once, one line each, exit 0 only when all
pass; every failure provoked against the emulators says what is wrong and what to do, and no secret is printed."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eventhub_helpers import EventHubStack
from tests.o365_helpers import TRIGGER as OFFICE365, O365Rig, bytecode_cache_env
from tests.support.connect_proxy import ConnectProxy

EVENTHUB = "consume_eventhub_messages"
ROOT = Path(__file__).resolve().parent.parent
WRONG_HUB_KEY = "V3J0bmcta2V5LXRoYXQtbm8tb25lLWtub3dz"
PROXY_PASSWORD = "pr0xy-pass-check"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                   "no_proxy")


def run_check(parameters: str, env: dict[str, str]) -> tuple[int, list[str], str]:
    """The container's entry point; its exit code, its lines, and everything it wrote."""
    base = {k: v for k, v in os.environ.items() if k not in {"TRIGGER_CONFIGURATION", "INTAKE_URL", *PROXY_VARIABLES}}
    result = subprocess.run([sys.executable, "main.py", "check", parameters], cwd=ROOT, capture_output=True,
                            timeout=240, env={**base, **bytecode_cache_env(), **env})
    out = result.stdout.decode()
    return result.returncode, [line for line in out.splitlines() if line.startswith("[")], out + result.stderr.decode()


def line(lines: list[str], step: str) -> str:
    found = [text for text in lines if text.split("] ", 1)[1].startswith(step + ":")]
    assert len(found) == 1, (step, lines)
    return found[0]


# -- Office 365 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with O365Rig(tmp_path_factory.mktemp("check"), "--blobs", "1", "--no-dlp-permission") as rig:
        yield rig


def test_office365_check_passes_each_step_and_names_the_missing_dlp_permission(rig):
    config = rig.trigger_config()
    code, lines, everything = run_check(OFFICE365, rig.env(config))
    assert code == 1  # DLP.All: the emulator's app lacks ActivityFeed.ReadDlp
    assert line(lines, "Configuration").startswith("[PASS]")
    entra = line(lines, "Microsoft Entra")
    assert entra.startswith("[PASS]") and "cloud `enterprise`" in entra
    for content_type in ("Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General"):
        assert line(lines, f"Content type {content_type}").startswith("[PASS] "), lines
        assert "ActivityFeed.Read granted" in line(lines, f"Content type {content_type}")
    dlp = line(lines, "Content type DLP.All")
    assert dlp.startswith("[FAIL]") and "ActivityFeed.ReadDlp" in dlp and "`content_types`" in dlp
    assert line(lines, "Intake").startswith("[PASS]")
    assert "1 of 9 checks failed" in everything
    assert config["client_secret"] not in everything and config["intake_key"] not in everything
    # Nothing started: the check lists, it does not subscribe.
    stats = rig.emulator.stats()
    assert stats["requests"].get("subscriptions_start", 0) == 0 and stats["requests"]["content_list"] >= 5

    code, lines, _ = run_check(OFFICE365, rig.env({**config, "content_types": ["Audit.Exchange"]}))
    assert code == 0 and all(text.startswith("[PASS]") for text in lines if "] Proxy:" not in text), lines
    assert line(lines, "Proxy").startswith("[SKIP]") and "direct connections" in line(lines, "Proxy")


def test_office365_check_says_a_wrong_secret_and_skips_what_needs_a_token(rig):
    config = rig.trigger_config(client_secret="not-the-secret-value", content_types=["Audit.Exchange"])
    code, lines, everything = run_check(OFFICE365, rig.env(config))
    assert code == 1
    entra = line(lines, "Microsoft Entra")
    assert entra.startswith("[FAIL]") and "AADSTS7000215" in entra and "`client_secret`" in entra
    assert line(lines, "Content type Audit.Exchange").startswith("[SKIP]")
    assert "not-the-secret-value" not in everything


def test_a_refused_intake_key_and_an_invalid_setting(rig):
    config = rig.trigger_config(intake_key="0123456789abcdef-wrong", content_types=["Audit.General"])
    code, lines, everything = run_check(OFFICE365, rig.env(config))
    intake = line(lines, "Intake")
    assert code == 1 and intake.startswith("[FAIL]") and "HTTP 401" in intake and "`intake_key`" in intake
    assert "0123456789abcdef-wrong" not in everything

    code, lines, _ = run_check(OFFICE365, rig.env(rig.trigger_config(tenant_id="contoso")))
    assert code == 1 and lines[-1].startswith("[FAIL] Configuration:") and "`tenant_id`" in lines[-1], lines


@pytest.mark.parametrize("status", [407, 403, 502])
def test_a_refusing_proxy_is_named_with_its_answer(rig, status):
    with ConnectProxy(auth=("check", PROXY_PASSWORD), refuse=status) as proxy:
        config = rig.trigger_config(content_types=["Audit.Exchange"])
        env = {**rig.env(config), "HTTPS_PROXY": proxy.url_with_credentials}
        code, lines, everything = run_check(OFFICE365, env)
    port = rig.info["management_url"].rsplit(":", 1)[1].split("/")[0]
    entra_proxy = line(lines, "Proxy to Microsoft Entra")
    assert code == 1 and entra_proxy.startswith("[FAIL]")
    assert f"the proxy {proxy.url} answered {status}" in entra_proxy and f"CONNECT 127.0.0.1:{port}" in entra_proxy
    assert line(lines, "Microsoft Entra").startswith("[FAIL]")  # the token's own step says the proxy too
    assert f"the proxy {proxy.url} answered {status}" in line(lines, "Microsoft Entra")
    assert PROXY_PASSWORD not in everything


def test_a_proxy_letting_everything_through_passes(rig):
    with ConnectProxy(auth=("check", PROXY_PASSWORD)) as proxy:
        config = rig.trigger_config(content_types=["Audit.Exchange"])
        code, lines, everything = run_check(OFFICE365, {**rig.env(config), "HTTPS_PROXY": proxy.url_with_credentials})
        assert code == 0, lines
        assert line(lines, "Proxy to the Management API").startswith("[PASS]")
        assert proxy.through("127.0.0.1") >= 3  # two probes, then the token and the API's calls themselves
    assert PROXY_PASSWORD not in everything


# -- Event Hubs -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with EventHubStack(tmp_path_factory.mktemp("check-hub"), partitions=2,
                       emulator_args={"strict_consumer_groups": True}) as stack:
        yield stack


def test_eventhub_check_passes_and_leaves_no_trace(stack):
    before = stack.azurite.admin.list_blobs("checkpoints")
    code, lines, everything = run_check(EVENTHUB, stack.env(stack.config()))
    assert code == 0, everything
    assert [text.split(":")[0] for text in lines] == [
        "[PASS] Configuration", "[SKIP] Proxy", "[PASS] Event Hubs port", "[PASS] Event hub", "[PASS] Consumer group",
        "[PASS] Checkpoint store", "[PASS] Intake"]
    assert "2 partitions" in line(lines, "Event hub")
    assert stack.azurite.admin.list_blobs("checkpoints") == before  # the probe blob deleted, nothing else written
    assert stack.emulator.info["key"] not in everything and "Eby8vdM02x" not in everything


@pytest.mark.parametrize("case", ["wrong_key", "consumer_group", "missing_container", "unreachable_port"])
def test_eventhub_check_says_each_mistake(stack, case):
    hub = stack.connection_string
    config, step, words = {
        "wrong_key": (stack.config(hub_connection_string=hub.replace(stack.emulator.info["key"], WRONG_HUB_KEY)),
                      "Event hub", "refused the key"),
        "consumer_group": (stack.config(hub_consumer_group="not-created"), "Consumer group", "does not exist"),
        "missing_container": (stack.config(storage_container_name="not-there"), "Checkpoint store",
                              "container `not-there` does not exist"),
        "unreachable_port": (stack.config(hub_connection_string=hub.replace(f":{stack.emulator.info['port']};",
                                                                            f":{closed_port()};")),
                             "Event Hubs port", "is reachable"),
    }[case]
    code, lines, everything = run_check(EVENTHUB, stack.env(config))
    assert code == 1
    assert line(lines, step).startswith("[FAIL]") and words in line(lines, step), lines
    assert WRONG_HUB_KEY not in everything and stack.emulator.info["key"] not in everything


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def signals_back():
    """The SDK's trigger takes SIGINT and SIGTERM: give them back to pytest."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_only_443_reachable_suggests_websockets(stack, monkeypatch, signals_back):
    """Port 5671 closed, 443 open (here a listener on another port stands for 443): use_websockets suggested."""
    from azure_eventhub import preflight as hub_steps
    from connectors import preflight

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setattr(hub_steps, "WEBSOCKETS_PORT", listener.getsockname()[1])
        hub = stack.connection_string.replace(f":{stack.emulator.info['port']};", f":{closed_port()};")
        for key, value in stack.env(stack.config(hub_connection_string=hub)).items():
            monkeypatch.setenv(key, value)
        out = io.StringIO()
        assert preflight.main([EVENTHUB], out=out) == 1
    port_line = line([text for text in out.getvalue().splitlines() if text.startswith("[")], "Event Hubs port")
    assert port_line.startswith("[FAIL]") and "set `use_websockets` to true" in port_line


@pytest.mark.parametrize("code, status, message", [
    ("AF20011", 400, "Tenant 0a1b... does not exist."),
    ("", 400, "The tenant 0a1b... does not exist."),
])
def test_a_tenant_the_api_does_not_know_is_explained_as_audit_logging_off(code, status, message):
    """Pure wording (the emulator has no such tenant): Microsoft answers so while unified audit logging is off."""
    from office365.client import ApiError
    from office365.preflight import _explain

    text = _explain(ApiError(status, code, message), "Audit.Exchange")
    assert "unified audit logging is not enabled" in text and "Microsoft Purview" in text


def test_a_proxy_is_named_without_its_credentials():
    from connectors.proxy import ProxyRefusal, public

    assert public("http://user:p%40ss@proxy.corp:3128") == "http://proxy.corp:3128"
    assert public("proxy.corp:8080") == "http://proxy.corp:8080"
    refusal = ProxyRefusal(public("http://u:secret@proxy.corp:3128"), "manage.office.com:443", 403, "Forbidden")
    assert str(refusal) == "the proxy http://proxy.corp:3128 answered 403 Forbidden to CONNECT manage.office.com:443"
    assert refusal.fatal and refusal.configuration_error().field == "HTTPS_PROXY"
    assert not ProxyRefusal("http://proxy.corp:3128", "x:443", 502, "Bad Gateway").fatal
