"""``python main.py check <docker_parameters>``: the pre-flight check a customer runs before calling support.

Same configuration and environment as a run (the runtime's files and variables, its secrets, the proxy), each step
tried once, nothing collected, nothing acknowledged, nothing started: one line per step, passed or failed with
what to do, and exit code 0 when every step passed, 1 otherwise. Secrets are never printed (every line goes
through the redaction of the configured secrets).

The steps common to both triggers are here (runtime secrets, configuration, proxy, intake); each trigger's own
are in its room (``office365/preflight.py``, ``azure_eventhub/preflight.py``): ``targets(config)`` names the
HTTPS endpoints the proxy must let through, ``steps(config, check)`` probes the source.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson

from connectors import proxy
from connectors.errors import ConfigurationError
from connectors.logs import Redactor, describe_error, install_redaction
from connectors.sdk_internals import fetch_runtime_secrets_once
from connectors.secrets import reveal, scrub_sentry_events
from connectors.sinks import client_session

PASSED, FAILED, SKIPPED = "PASS", "FAIL", "SKIP"
STEP_TIMEOUT = 30.0  # seconds one step may take: a check that hangs helps nobody


class StepFailed(Exception):
    """A step's failure, already worded as what is wrong and what to do."""


class Check:
    """Runs steps once each and prints one line per step."""

    def __init__(self, redactor: Redactor, out: TextIO | None = None):
        self.redactor = redactor
        self.out = out or sys.stdout
        self.results: list[tuple[str, str]] = []  # (outcome, step)

    def say(self, outcome: str, step: str, detail: str) -> None:
        self.results.append((outcome, step))
        print(self.redactor(f"[{outcome}] {step}: {detail}"), file=self.out, flush=True)

    async def step(self, name: str, probe: Callable[[], Awaitable[str]], timeout: float = STEP_TIMEOUT) -> bool:
        """``probe`` returns what passed, or raises what failed; True when it passed."""
        try:
            detail = await asyncio.wait_for(probe(), timeout)
        except StepFailed as error:
            self.say(FAILED, name, str(error))
            return False
        except ConfigurationError as error:
            self.say(FAILED, name, f"{error.expected} (setting `{error.field}`)")
            return False
        except asyncio.TimeoutError:
            self.say(FAILED, name, f"no answer within {timeout:.0f}s: check the network path (firewall, proxy)")
            return False
        except Exception as error:  # noqa: BLE001 - a check reports every failure, it never crashes on one
            self.say(FAILED, name, f"unexpected failure ({describe_error(error)})")
            return False
        self.say(PASSED, name, detail)
        return True

    def skip(self, name: str, why: str) -> None:
        self.say(SKIPPED, name, why)

    @property
    def failed(self) -> int:
        return sum(1 for outcome, _ in self.results if outcome == FAILED)

    def summary(self) -> int:
        ran = sum(1 for outcome, _ in self.results if outcome != SKIPPED)
        if self.failed:
            print(f"{self.failed} of {ran} checks failed: fix them, then run the check again", file=self.out)
            return 1
        print(f"All {ran} checks passed", file=self.out)
        return 0


# -- the proxy ----------------------------------------------------------------------------------------------------


async def connect_through(proxy_url: str, target: str, timeout: float = 10.0) -> proxy.ProxyRefusal | None:
    """One CONNECT ``target`` (host:port) through ``proxy_url``: None when the proxy opened the tunnel, else what it
    answered. The tunnel is closed at once: nothing goes through it."""
    parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    where = proxy.public(proxy_url)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 80), timeout)
    except (OSError, asyncio.TimeoutError) as error:
        return proxy.ProxyRefusal(where, target, 0, type(error).__name__)
    try:
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if parts.username:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            head += f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
        writer.write((head + "\r\n").encode())
        await writer.drain()
        status_line = (await asyncio.wait_for(reader.readline(), timeout)).decode("latin-1").split(" ", 2)
    except (OSError, asyncio.TimeoutError) as error:
        return proxy.ProxyRefusal(where, target, 0, type(error).__name__)
    finally:
        writer.close()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    if 200 <= status < 300:
        return None
    return proxy.ProxyRefusal(where, target, status, status_line[2].strip() if len(status_line) > 2 else "")


async def check_proxy(check: Check, targets: list[tuple[str, str, str | None]]) -> None:
    """For each HTTPS endpoint (what, URL, the trigger's own proxy setting): the proxy that applies, if any,
    opens a tunnel to it. Plain-HTTP endpoints go through a proxy without a tunnel: their own step says."""
    proxied = [(what, url, configured) for what, url, configured in targets if proxy.proxy_for(url, configured)]
    if not proxied:
        check.skip("Proxy", "none applies (HTTPS_PROXY and HTTP_PROXY unset, or NO_PROXY names every endpoint): "
                            "direct connections")
        return
    for what, url, configured in proxied:
        found = proxy.proxy_for(url, configured) or ""
        if not url.startswith("https://"):
            check.skip(f"Proxy to {what}", f"plain HTTP through {proxy.public(found)}, no tunnel: its own step says")
            continue
        target = f"{urlsplit(url).hostname}:{urlsplit(url).port or 443}"

        async def probe(found: str = found, target: str = target) -> str:
            refused = await connect_through(found, target)
            if refused is not None:
                raise StepFailed(refused.message())
            return f"{proxy.public(found)} opens a tunnel to {target}"

        await check.step(f"Proxy to {what}", probe)


# -- the intake -----------------------------------------------------------------------------------------------------


async def check_intake(check: Check, intake_url: str | None, intake_key: str | None) -> None:
    """The key accepted: an empty batch (nothing forwarded) and the intake's answer."""
    if not intake_key:
        check.skip("Intake", "no `intake_key`: records go to the playbook through the runtime")
        return
    if not intake_url:
        check.say(FAILED, "Intake", "no `intake_server` and the runtime gives no INTAKE_URL: set `intake_server` "
                                    "(e.g. https://intake.sekoia.io)")
        return
    url = intake_url.rstrip("/") + "/batch"

    async def probe() -> str:
        async with client_session(1, url) as session:
            try:
                async with session.post(url, data=orjson.dumps({"intake_key": intake_key, "jsons": []}),
                                        headers={"Content-Type": "application/json"}, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=20)) as response:
                    status = response.status
            except (aiohttp.ClientError, OSError) as error:
                refused = proxy.refusal(error, url)
                if refused is not None:
                    raise StepFailed(refused.message()) from None
                raise StepFailed(f"{_origin(url)} unreachable ({describe_error(error)}): check `intake_server` "
                                 "and that this network may reach it (firewall, proxy)") from None
        if status < 300:
            return f"{_origin(url)} accepts the intake key (an empty batch, nothing forwarded)"
        if status in (401, 403):
            raise StepFailed(f"{_origin(url)} refused the intake key (HTTP {status}): copy the key shown on the "
                             "intake's page in Sekoia.io (setting `intake_key`)")
        if status in (404, 405) or 300 <= status < 400:
            raise StepFailed(f"{url} is not an intake batch API (HTTP {status}): set `intake_server` to the "
                             "intake's base URL (e.g. https://intake.sekoia.io)")
        raise StepFailed(f"{_origin(url)} answered HTTP {status}: try again later; if it lasts, contact support")

    await check.step("Intake", probe)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- the command ----------------------------------------------------------------------------------------------------


def _trigger_class(parameters: str) -> type:
    from connectors.schema import registrations  # main.py's literal registrations: the one list of triggers

    found = registrations().get(parameters)
    if found is None:
        known = ", ".join(sorted(registrations()))
        raise SystemExit(f"usage: python main.py check <docker_parameters> (one of {known})")
    return getattr(importlib.import_module(found[0]), found[1])


def main(argv: list[str], out: TextIO | None = None) -> int:
    if len(argv) != 1:
        raise SystemExit("usage: python main.py check <docker_parameters>")
    trigger_class = _trigger_class(argv[0])
    from sekoia_automation.module import Module

    trigger = trigger_class(Module())
    check = Check(Redactor(), out)
    try:
        fetch_runtime_secrets_once(trigger)
    except Exception as error:  # noqa: BLE001 - said, then the configuration as it is
        check.say(FAILED, "Runtime secrets", f"the runtime's secrets endpoint failed ({describe_error(error)}): "
                                             "the configuration is checked without them")
    try:
        config = trigger.configuration
    except ConfigurationError as error:
        check.say(FAILED, "Configuration", f"{error.expected} (setting `{error.field}`)")
        return check.summary()
    check.redactor.add(trigger._secret_values())
    install_redaction(check.redactor)  # the client libraries' own log lines too
    logging.getLogger().setLevel(logging.WARNING)  # their requests one by one would bury the check's lines
    scrub_sentry_events(check.redactor)
    room = importlib.import_module(trigger_class.__module__.rsplit(".", 1)[0] + ".preflight")
    try:
        intake_url = config.intake_server or trigger.intake_url
    except Exception:  # noqa: BLE001 - MissingConfigurationError: said by the intake step
        intake_url = None
    check.say(PASSED, "Configuration", f"{argv[0]}: every setting is valid")

    async def run() -> None:
        targets = room.targets(config)
        if config.intake_key and intake_url:
            targets.append(("the intake", intake_url, None))
        await check_proxy(check, targets)
        await room.steps(config, check)
        await check_intake(check, intake_url, reveal(config.intake_key))

    asyncio.run(run())
    return check.summary()

