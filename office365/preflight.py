"""The Office 365 trigger's steps of ``python main.py check``: a token from Microsoft Entra (and for which
cloud), then per content type its subscription and the permission to read it, by listing the last hour once.
Read-only: no subscription is started, nothing is fetched or acknowledged."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from connectors.preflight import Check, StepFailed
from office365.auth import TokenProvider, TransientAuthError
from office365.client import ApiError, ManagementClient
from office365.config import CLOUDS, Office365Configuration, resolve_credential, resolve_endpoints
from office365.listing import floor_second, format_time
from office365.pacing import ConcurrencyLimit, Gate, QuotaPacer
from office365.subscriptions import DISABLED_BY_ADMIN, DLP, NOT_SUBSCRIBED, fatal

TENANT_UNKNOWN = ("AF20011", "AF20012")


def targets(config: Office365Configuration) -> list[tuple[str, str, str | None]]:
    endpoints = resolve_endpoints(config)
    return [("Microsoft Entra", endpoints.authority, None), ("the Management API", endpoints.feed, None)]


class _OneToken:
    """The token the Entra step got, for the API steps: a 401 is an answer to report, not a reason to renew."""

    def __init__(self, token: str):
        self._token = token

    async def token(self) -> str:
        return self._token

    async def renew_after_rejection(self, rejected: str) -> str:
        return self._token


def _explain(error: ApiError, content_type: str) -> str:
    tenant_unknown = error.code in TENANT_UNKNOWN or (
        error.status == 400 and "tenant" in error.message.lower() and "does not exist" in error.message.lower())
    if tenant_unknown:
        return (f"the API knows no audit log for this tenant ({error.code or 'tenant does not exist'}): unified audit "
                "logging is not enabled. Turn it on (Microsoft Purview > Audit > Start recording user and admin "
                "activity), wait up to an hour, and check `cloud`")
    problem = fatal(error, content_type)
    if problem is not None:
        return f"{problem.expected} (setting `{problem.field}`)"
    return f"the API answered {error}: try again in a few minutes; if it lasts, contact support"


async def steps(config: Office365Configuration, check: Check) -> None:
    endpoints = resolve_endpoints(config)
    login_host, resource = CLOUDS[config.cloud]
    tokens = TokenProvider(endpoints, config.client_id, resolve_credential(config), lambda *_: None,
                           timeout=config.request_timeout_seconds, redactor=check.redactor)
    token: list[str] = []

    async def entra() -> str:
        try:
            value, _ = await asyncio.to_thread(tokens._acquire)  # one attempt: the run retries, a check says
        except TransientAuthError as error:
            raise StepFailed(f"Microsoft Entra did not answer at {endpoints.authority} ({error}): check that this "
                             "network may reach it (firewall, proxy)") from None
        check.redactor.add([value])
        token.append(value)
        return (f"token for {resource} from {config.login_url or login_host} (cloud `{config.cloud}`, tenant "
                f"{config.tenant_id})")

    if not await check.step("Microsoft Entra", entra):
        for content_type in config.content_types:
            check.skip(f"Content type {content_type}", "needs a token from Microsoft Entra")
        return
    gate = Gate(ConcurrencyLimit(2), QuotaPacer(None))
    one_token: Any = _OneToken(token[0])  # what the client asks of a TokenProvider
    client = ManagementClient(endpoints.feed, endpoints.publisher_identifier, one_token, gate,
                              timeout=config.request_timeout_seconds, rewrite_origin=config.management_url is not None)
    async with client:
        enabled: dict[str, str] = {}

        async def subscriptions() -> str:
            try:
                response = await client.get(client.operation_url("subscriptions/list"), "subscription")
            except ApiError as error:
                raise StepFailed(_explain(error, "")) from None
            data = response.json() if response.body.strip() else []
            for entry in data if isinstance(data, list) else []:
                if isinstance(entry, dict):
                    enabled[str(entry.get("contentType")).lower()] = str(entry.get("status", "")).lower()
            on = [ct for ct in config.content_types if enabled.get(ct.lower()) == "enabled"]
            return f"{endpoints.feed} answers; subscriptions enabled: {', '.join(on) or 'none yet'}"

        if not await check.step("Management API", subscriptions):
            return
        for content_type in config.content_types:
            await check.step(f"Content type {content_type}", lambda ct=content_type: _content_type(client, ct, enabled))


async def _content_type(client: ManagementClient, content_type: str, enabled: dict[str, str]) -> str:
    permission = "ActivityFeed.ReadDlp" if content_type == DLP else "ActivityFeed.Read"
    end = floor_second(client.now())
    url = client.operation_url("subscriptions/content", contentType=content_type,
                               startTime=format_time(end - timedelta(hours=1)), endTime=format_time(end))
    started = time.monotonic()
    try:
        await client.get(url, "list")
    except ApiError as error:
        if error.code == NOT_SUBSCRIBED:
            return f"{permission} granted; no subscription yet: the trigger starts it at its first run"
        if error.code == DISABLED_BY_ADMIN:
            return (f"{permission} granted; the subscription was disabled by an administrator: the trigger starts it "
                    "again, ask your Microsoft 365 administrator to leave it on")
        raise StepFailed(_explain(error, content_type)) from None
    state = enabled.get(content_type.lower(), "none")
    return (f"{permission} granted, subscription {state}, the last hour listed in "
            f"{time.monotonic() - started:.1f}s")
