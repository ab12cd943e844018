"""Locked-down networks (issue 18): every client of the module goes through the HTTP proxy of the environment
(``HTTPS_PROXY``, ``NO_PROXY``; the Event Hubs trigger's ``http_proxy`` for its store), records move through it,
and a proxy that refuses (407, 403, 502) is said once, naming the proxy (never its credentials) and its answer."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from azure_eventhub.clients import probe_store
from azure_eventhub.config import EventHubConfiguration
from connectors.errors import ConfigurationError
from connectors.sinks import IntakeSink
from emulators.azurite import Azurite, connection_string
from emulators.office365.harness import trust_emulator_ca
from emulators.process import eventually, wait_until
from office365.auth import TokenProvider
from tests.eventhub_helpers import CONTAINER, EventHubStack, records_with_ids
from tests.o365_helpers import O365Rig, emulator_client
from tests.support.connect_proxy import ConnectProxy
from tests.test_delivery import events, forwarder, tls_front

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                   "no_proxy")
SECRET_PASSWORD = "s3cret-proxy-pass"


@pytest.fixture(autouse=True)
def _no_proxy_of_the_machine(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def port_of(url: str) -> int:
    return urlsplit(url).port or 443


# -- records through the proxy --------------------------------------------------------------------------------------


def test_office365_records_go_through_the_proxy_entra_and_the_api_both(tmp_path):
    """Entra at https://localhost:P, the API at https://127.0.0.1:P: the proxy tells them apart, and NO_PROXY
    takes Entra out of it."""
    with ConnectProxy(auth=("collector", SECRET_PASSWORD)) as proxy, \
            O365Rig(tmp_path, "--blobs", "3", "--records-per-blob", "4") as rig:
        port = port_of(rig.info["management_url"])
        config = rig.trigger_config(login_url=f"https://localhost:{port}")
        env_proxy = {"HTTPS_PROXY": proxy.url_with_credentials}
        proc = start_with(rig, config, env_proxy)
        assert rig.wait_complete(90), rig.comparison()
        rig.stop_trigger(proc)
        assert proxy.tunnels[f"localhost:{port}"] >= 1  # Entra (MSAL, requests)
        assert proxy.tunnels[f"127.0.0.1:{port}"] >= 1  # the Management API (aiohttp)
        assert proxy.refused == {}

        # NO_PROXY names Entra's host: the token comes directly, the API still through the proxy.
        tunnels_before = proxy.tunnels[f"localhost:{port}"]
        proc = start_with(rig, config, {**env_proxy, "NO_PROXY": "localhost"}, log_name="trigger-2.log")
        assert wait_until(lambda: proxy.tunnels[f"127.0.0.1:{port}"] >= 2, 60)
        rig.stop_trigger(proc)
        assert proxy.tunnels[f"localhost:{port}"] == tunnels_before


def start_with(rig: O365Rig, config: dict, extra: dict, log_name: str = "trigger.log"):
    import os
    import subprocess

    from emulators.process import python_child
    from tests.o365_helpers import TRIGGER, bytecode_cache_env

    env = {**{k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}, **rig.env(config),
           **bytecode_cache_env(), **extra}
    with open(rig.workdir / log_name, "ab") as log:
        proc = python_child("main.py", TRIGGER, env=env, stdout=log, stderr=subprocess.STDOUT)
    rig.triggers.append(proc)
    return proc


def test_eventhub_checkpoints_go_through_the_proxy_of_the_environment(tmp_path):
    """The checkpoint store (Azurite, plain HTTP: absolute-form requests) and the intake through the proxy; the
    hub's AMQP does not use the environment's proxy."""
    with ConnectProxy() as proxy, EventHubStack(tmp_path, partitions=2) as stack:
        stack.publish(records_with_ids(20))
        config = stack.config()
        base = {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url}
        proc = start_eventhub(stack, config, base)
        assert wait_until(lambda: stack.delivered_count() >= 20, 90), stack.delivered_count()
        assert wait_until(lambda: len(stack.checkpoints()) == 2, 30), stack.checkpoints()
        proc.stop(30)
        azurite = f"127.0.0.1:{stack.azurite.port}"
        runtime = f"127.0.0.1:{stack.runtime.info['port']}"
        assert proxy.forwarded[azurite] >= 2  # the probe, ownership and checkpoint writes
        assert proxy.forwarded[runtime] >= 1  # the intake


def test_the_eventhub_trigger_stops_with_one_critical_line_naming_the_proxy(tmp_path):
    """The store behind a proxy that forbids it: exit code 2 and one critical line, not a start-up that retries."""
    with ConnectProxy(auth=("hub", SECRET_PASSWORD)) as proxy, EventHubStack(tmp_path, partitions=2) as stack:
        proxy.refuse_hosts[f"127.0.0.1:{stack.azurite.port}"] = 403
        proc = start_eventhub(stack, stack.config(), {"HTTP_PROXY": proxy.url_with_credentials})
        assert proc.wait(90) == 2
        critical = [line["message"] for line in stack.logs() if line["level"] == "critical"]
        assert len(critical) == 1, stack.logs()
        assert f"the proxy {proxy.url} answered 403 Forbidden" in critical[0] and "`HTTP_PROXY`" in critical[0]
        assert SECRET_PASSWORD not in "".join(path.read_text() for path in stack.workdir.glob("trigger-*.log"))


def start_eventhub(stack: EventHubStack, config: dict, extra: dict):
    import os

    from emulators.process import python_child
    from tests.eventhub_helpers import TRIGGER

    base = {k: v for k, v in os.environ.items() if k not in {"TRIGGER_CONFIGURATION", "INTAKE_URL", *PROXY_VARIABLES}}
    with open(stack.workdir / f"trigger-{len(stack.processes)}.log", "ab") as log:
        proc = python_child("main.py", TRIGGER, env={**base, **stack.env(config), **extra}, stdout=log, stderr=log)
    stack.processes.append(proc)
    return proc


async def test_the_store_follows_the_triggers_http_proxy_setting_and_no_proxy(tmp_path, monkeypatch):
    with Azurite(location=tmp_path / "azurite", log_path=tmp_path / "azurite.log") as azurite, \
            ConnectProxy(auth=("hub", SECRET_PASSWORD)) as proxy:
        azurite.create_container(CONTAINER)
        azurite_host = f"127.0.0.1:{azurite.port}"
        config = store_config(azurite.connection_string, http_proxy=proxy.url_with_credentials)
        await probe_store(config, None)
        assert proxy.forwarded[azurite_host] == 1 and proxy.refused == {}
        # From the environment, and NO_PROXY honoured.
        monkeypatch.setenv("HTTP_PROXY", proxy.url_with_credentials)
        await probe_store(store_config(azurite.connection_string), None)
        assert proxy.forwarded[azurite_host] == 2
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await probe_store(store_config(azurite.connection_string), None)
        assert proxy.forwarded[azurite_host] == 2


def store_config(storage: str, **overrides) -> EventHubConfiguration:
    return EventHubConfiguration.model_validate({
        "hub_connection_string": "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=h",
        "storage_connection_string": storage, "storage_container_name": CONTAINER, **overrides})


async def test_delivery_goes_through_the_proxy_unless_no_proxy_names_the_intake(runtime, tmp_path, monkeypatch):
    front, ca_file, server = await tls_front(tmp_path, runtime.info["port"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    try:
        url = front + urlsplit(runtime.info["intake_url"]).path
        with ConnectProxy(auth=("intake", SECRET_PASSWORD)) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_credentials)
            fwd = forwarder(runtime, tmp_path, sink=IntakeSink(url, runtime.info["intake_key"], user_agent="tests"))
            await fwd.add(events(5))
            assert await fwd.drain(timeout=30)
            await fwd.close()
            assert sorted(runtime.delivered()) == sorted(events(5))
            assert proxy.tunnels[urlsplit(front).netloc] >= 1 and proxy.bytes_up[urlsplit(front).netloc] > 0
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            fwd = forwarder(runtime, tmp_path, sink=IntakeSink(url, runtime.info["intake_key"], user_agent="tests"))
            await fwd.add(events(5, start=5))
            assert await fwd.drain(timeout=30)
            await fwd.close()
            assert len(runtime.delivered()) == 10 and proxy.tunnels[urlsplit(front).netloc] == 1
    finally:
        server.close()
        await server.wait_closed()


# -- a proxy that refuses -------------------------------------------------------------------------------------------

REFUSALS = {407: "407 Proxy Authentication Required", 403: "403 Forbidden", 502: "502 Bad Gateway"}


def assert_names_the_proxy(text: str, proxy: ConnectProxy, status: int) -> None:
    assert f"the proxy {proxy.url} answered {REFUSALS[status]}" in text, text
    assert SECRET_PASSWORD not in text


@pytest.mark.parametrize("status", [407, 403])
async def test_delivery_stops_on_a_proxy_refusing_the_tunnel(runtime, tmp_path, monkeypatch, status):
    with ConnectProxy(auth=("intake", SECRET_PASSWORD), refuse=status) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_credentials)
        fatal, logs = [], []
        sink = IntakeSink("https://intake.invalid", runtime.info["intake_key"], user_agent="tests")
        fwd = forwarder(runtime, tmp_path, sink=sink, fatal=fatal, logs=logs)
        await fwd.add(events(3))
        assert await eventually(lambda: fatal, 20)
        await fwd.close(grace=0.5)
        [error] = fatal
        assert isinstance(error, ConfigurationError) and error.field == "HTTPS_PROXY"
        assert_names_the_proxy(str(error), proxy, status)
        assert "CONNECT intake.invalid:443" in str(error) and runtime.delivered() == []


async def test_delivery_says_a_proxy_answering_502_once_and_retries(runtime, tmp_path, monkeypatch):
    with ConnectProxy(refuse=502) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        fatal, logs = [], []
        sink = IntakeSink("https://intake.invalid", runtime.info["intake_key"], user_agent="tests")
        fwd = forwarder(runtime, tmp_path, sink=sink, fatal=fatal, logs=logs)
        await fwd.add(events(3))
        assert await eventually(lambda: sum(proxy.refused.values()) >= 3, 20)  # retried
        await fwd.close(grace=0.5)
        # Said once however many attempts (the stop may add its own line about unconfirmed events).
        warnings = [message for level, message in logs if level == "warning" and "proxy" in message]
        assert len(warnings) == 1 and fatal == [], logs
        assert_names_the_proxy(warnings[0], proxy, 502)
        assert "could not reach intake.invalid:443" in warnings[0]


@pytest.mark.parametrize("status", [407, 403, 502])
def test_entra_through_a_refusing_proxy(tmp_path, monkeypatch, status):
    """The token (MSAL over requests): 407 and 403 stop with one error; a 502 is retried, said once with the
    proxy's answer (before: "token endpoint unreachable (ProxyError)", whatever the proxy said)."""
    with O365Rig(tmp_path) as rig, ConnectProxy(auth=("entra", SECRET_PASSWORD), refuse=status) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_credentials)
        client = emulator_client(rig.info, timeout=5)
        said = []
        tokens = TokenProvider(client.tokens.endpoints, client.tokens.client_id, client.tokens.credential,
                               lambda message, level: said.append((level, message)), timeout=5)

        async def main():
            return await asyncio.wait_for(tokens.token(), 8 if status == 502 else 30)

        with trust_emulator_ca(rig.info["ca_file"]):
            if status == 502:
                with pytest.raises(asyncio.TimeoutError):
                    asyncio.run(main())
                [(level, message)] = said
                assert level == "warning"
                assert_names_the_proxy(message, proxy, status)
            else:
                with pytest.raises(ConfigurationError) as raised:
                    asyncio.run(main())
                assert raised.value.field == "HTTPS_PROXY"
                assert_names_the_proxy(str(raised.value), proxy, status)
        assert proxy.refused[f"127.0.0.1:{port_of(rig.info['login_url'])} {status}"] >= 1


@pytest.mark.parametrize("status", [407, 403])
def test_the_management_api_through_a_refusing_proxy_is_a_configuration_error(tmp_path, monkeypatch, status):
    """Entra direct (NO_PROXY=localhost), the API's host refused by the proxy: the first call says so."""
    with O365Rig(tmp_path) as rig, ConnectProxy() as proxy:
        port = port_of(rig.info["management_url"])
        proxy.refuse_hosts[f"127.0.0.1:{port}"] = status
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost")
        info = {**rig.info, "login_url": f"https://localhost:{port}"}

        async def body(client):
            return await client.get(client.operation_url("subscriptions/list"), "subscription")

        async def main():
            async with emulator_client(info, timeout=5) as client:
                return await body(client)

        with trust_emulator_ca(rig.info["ca_file"]), pytest.raises(ConfigurationError) as raised:
            asyncio.run(main())
        assert_names_the_proxy(str(raised.value), proxy, status)
        assert proxy.tunnels == {}  # Entra went direct


def test_the_office365_trigger_stops_with_one_critical_line_naming_the_proxy(tmp_path):
    with ConnectProxy(auth=("collector", SECRET_PASSWORD), refuse=403) as proxy, O365Rig(tmp_path) as rig:
        proc = start_with(rig, rig.trigger_config(), {"HTTPS_PROXY": proxy.url_with_credentials})
        assert proc.wait(60) == 2
        critical = [line["message"] for line in rig.logs() if line["level"] == "critical"]
        assert len(critical) == 1, rig.logs()
        assert_names_the_proxy(critical[0], proxy, 403)
        assert SECRET_PASSWORD not in (tmp_path / "trigger.log").read_text()


@pytest.mark.parametrize("status", [407, 403, 502])
async def test_the_checkpoint_store_behind_a_refusing_proxy(tmp_path, status):
    """HTTPS storage (CONNECT refused) and plain-HTTP Azurite (the proxy's answer in place of the account's):
    either way the message is the proxy's, not "the account refused the key"."""
    with ConnectProxy(auth=("hub", SECRET_PASSWORD), refuse=status) as proxy, \
            Azurite(location=tmp_path / "azurite", log_path=tmp_path / "azurite.log") as azurite:
        https = connection_string("127.0.0.1", azurite.port).replace("http", "https")
        for storage in (https, azurite.connection_string):
            config = store_config(storage, http_proxy=proxy.url_with_credentials)
            with pytest.raises(ConfigurationError) as raised:
                await probe_store(config, None)
            assert raised.value.field == "http_proxy"
            assert f"the proxy {proxy.url} answered {status}" in str(raised.value)
            assert SECRET_PASSWORD not in str(raised.value)
