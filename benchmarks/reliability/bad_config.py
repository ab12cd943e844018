"""Bad configuration: each required field missing or wrong. The process must end by itself with exit code 2 and
one clear critical log naming the field, without a traceback flood or a retry storm (Office 365: the emulator
counts the token and API requests; both: the process ends within ``END_WITHIN_S``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from benchmarks.reliability.context import Context
from benchmarks.reliability.processes import output_counts
from benchmarks.reliability.stacks import EventHubStack, O365Stack, Stack
from benchmarks.reliability.verdict import finish

END_WITHIN_S = 60.0
MAX_OUTPUT_LINES = 15  # what the process writes in all: a few start-up lines and the critical one
MAX_TOKEN_REQUESTS = 3
MAX_API_REQUESTS = 10
WRONG_SECRET = "Wrong~" + uuid.uuid4().hex
WRONG_KEY = "V3Jvbmcta2V5LW5vYm9keS1rbm93cy0" + uuid.uuid4().hex[:12]

Case = tuple[Callable[[dict], dict], str]  # (make the configuration wrong, the field the log must name)


def _without(*names: str) -> Callable[[dict], dict]:
    return lambda config: {key: value for key, value in config.items() if key not in names}


def _with(**values) -> Callable[[dict], dict]:
    return lambda config: {**config, **values}


O365_CASES: dict[str, Case] = {
    "wrong_secret": (_with(client_secret=WRONG_SECRET), "client_secret"),
    "wrong_tenant": (_with(tenant_id=str(uuid.uuid4())), "tenant_id"),
    "unknown_client": (_with(client_id=str(uuid.uuid4())), "client_id"),
    "tenant_not_a_guid": (_with(tenant_id="contoso.onmicrosoft.com"), "tenant_id"),
    "missing_tenant": (_without("tenant_id"), "tenant_id"),
    "missing_client_id": (_without("client_id"), "client_id"),
    "missing_secret": (_without("client_secret"), "client_secret"),
    "plain_http_management_url": (lambda c: {**c, "management_url": c["management_url"].replace("https", "http")},
                                  "management_url"),
    "unknown_content_type": (_with(content_types=["Audit.Nothing"]), "content_types"),
}


def _eventhub_cases(stack: EventHubStack) -> dict[str, Case]:
    hub, storage = stack.stack.connection_string, stack.azurite.connection_string
    entity = f";EntityPath={stack.stack.hub}"
    return {
        "bad_connection_string": (_with(hub_connection_string="not-a-connection-string"), "hub_connection_string"),
        "wrong_hub_key": (_with(hub_connection_string=hub.replace(stack.key, WRONG_KEY)), "hub_connection_string"),
        "missing_connection_string": (_without("hub_connection_string"), "hub_connection_string"),
        "unknown_hub": (_with(hub_connection_string=hub.replace(entity, ";EntityPath=no-such-hub"),
                              hub_name="no-such-hub"), "hub_name"),
        "missing_hub_name": (lambda config: {**_without("hub_name")(config),
                                             "hub_connection_string": hub.replace(entity, "")}, "hub_name"),
        "missing_container": (_with(storage_container_name="no-such-container"), "storage_container_name"),
        "wrong_storage_key": (_with(storage_connection_string=storage.replace("Eby8vdM02x", "Xby8vdM02x")),
                              "storage_connection_string"),
        "bad_storage_connection_string": (_with(storage_connection_string="not-a-connection-string"),
                                          "storage_connection_string"),
        "unknown_consumer_group": (_with(hub_consumer_group="no-such-group"), "hub_consumer_group"),
    }


def expect_configuration_error(stack: Stack, name: str, config: dict, field: str,
                               after: Callable[[], dict] = dict) -> dict:
    """Start a trigger with ``config``: it must end by itself within ``END_WITHIN_S`` with exit code 2 and one
    critical log naming ``field``, without a traceback flood. Returns what was seen, with ``after()``'s figures
    and the ``problems`` found (a caller adds its own)."""
    seen = len(stack.runtime_logs())
    process = stack.spawn(config, name=name)
    code = process.wait(END_WITHIN_S)
    seconds = round(time.monotonic() - process.started, 1)
    if code is None:
        process.kill()
    critical = [str(entry.get("message", "")) for entry in stack.runtime_logs()[seen:] if entry.get("level") == "critical"]
    result = {"field": field, "exit_code": code, "seconds": seconds, "critical": critical[:3],
              "output_lines": len(process.output().splitlines()), **output_counts([process]), **after()}
    problems = []
    if code != 2:
        problems.append(f"exit code {code} (expected 2{'' if code is not None else f', still running after {END_WITHIN_S:.0f} s'})")
    if len(critical) != 1 or f"`{field}`" not in critical[0]:
        problems.append(f"expected one critical log naming `{field}`, got {critical[:3]}")
    if result["output_tracebacks"] or result["output_lines"] > MAX_OUTPUT_LINES:
        problems.append(f"{result['output_tracebacks']} tracebacks, {result['output_lines']} output lines")
    result["problems"] = problems
    return result


def _check_case(stack: Stack, name: str, case: Case, before: Callable[[], dict], after: Callable[[dict], dict]) -> dict:
    make, field = case
    config = make(stack.config())
    stack.ctx.artifacts.add_secrets(WRONG_SECRET, WRONG_KEY)
    counts = before()
    result = expect_configuration_error(stack, name, config, field, lambda: after(counts))
    if result.get("token_requests", 0) > MAX_TOKEN_REQUESTS or result.get("api_requests", 0) > MAX_API_REQUESTS:
        result["problems"].append(f"retry storm: {result.get('token_requests')} token and "
                                  f"{result.get('api_requests')} API requests")
    return result


def _summarise(cases: dict[str, dict]) -> dict:
    failures = [f"{name}: {problem}" for name, case in cases.items() for problem in case["problems"]]
    result = {"published": 0, "delivered_unique": 0, "lost": 0, "duplicates": 0, "kills": 0, "recovery_s": None,
              "cases": cases, "cases_passed": sum(not case["problems"] for case in cases.values())}
    return finish(result, failures)


def _selected(ctx: Context, cases: dict) -> dict:
    limit = ctx.scale.config_cases
    return dict(list(cases.items())[:limit]) if limit else cases


def o365_bad_config(ctx: Context) -> dict:
    results = {}
    with O365Stack(ctx, "o365_bad_config") as stack:
        def before() -> dict:
            return stack.emulator.stats()

        def after(counts: dict) -> dict:
            now = stack.emulator.stats()
            token = now["requests"].get("token", 0) - counts["requests"].get("token", 0)
            return {"token_requests": token, "api_requests": now["requests_total"] - counts["requests_total"] - token}

        # One at a time: the emulator's request counters are shared.
        for name, case in _selected(ctx, O365_CASES).items():
            results[name] = _check_case(stack, name, case, before, after)
    return _summarise(results)


def eventhub_bad_config(ctx: Context) -> dict:
    with EventHubStack(ctx, "eventhub_bad_config", partitions=2, strict_consumer_groups=True) as stack:
        # One at a time: each case reads its own lines of the runtime stub's logs.
        results = {name: _check_case(stack, name, case, dict, lambda counts: {})
                   for name, case in _selected(ctx, _eventhub_cases(stack)).items()}
    return _summarise(results)
