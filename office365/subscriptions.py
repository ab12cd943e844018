"""Subscriptions: one per content type must be enabled before its content is listed.

Started at start-up when missing (AF20024, "already enabled", is success), and again whenever a listing says
there is none (AF20022) or that an administrator disabled it (AF20023) - said in the logs, since content of
the interval it was off is never retrievable. Errors only a person can fix become ``ConfigurationError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from connectors.errors import ConfigurationError
from connectors.logs import LogFunction
from office365.client import ApiError, ManagementClient, UnreadableAnswer

ALREADY_ENABLED = "AF20024"
NOT_SUBSCRIBED = "AF20022"
DISABLED_BY_ADMIN = "AF20023"
RESTART_CODES = {NOT_SUBSCRIBED, DISABLED_BY_ADMIN}
DLP = "DLP.All"


class MissingDlpPermission(ConfigurationError):
    """DLP.All without ActivityFeed.ReadDlp: the other content types can still be collected."""


def fatal(error: ApiError, content_type: str | None = None) -> ConfigurationError | None:
    """The API errors that retrying cannot fix, as what to change."""
    code, message = error.code, error.message.lower()
    if code == "AF10001" or (error.status == 403 and "permission" in message):
        if content_type == DLP:
            return MissingDlpPermission(
                "content_types",
                "DLP.All needs the application permission ActivityFeed.ReadDlp of the Office 365 Management API: "
                "grant it with admin consent, or remove DLP.All from content_types",
            )
        return ConfigurationError(
            "client_id",
            "the app lacks the application permission ActivityFeed.Read of the Office 365 Management API: "
            "add it to the app registration and grant admin consent",
        )
    if code == "AF20010":
        return ConfigurationError("tenant_id", "does not match the tenant of the app's token (AF20010)")
    if code in ("AF20011", "AF20012") or (error.status == 400 and "does not exist" in message and "tenant" in message):
        return ConfigurationError(
            "tenant_id",
            f"the API does not know this tenant or it is misconfigured ({code or 'tenant unknown'}): check that "
            "unified audit logging is turned on in Microsoft Purview and that `cloud` is right",
        )
    if code == "AF20013":
        return ConfigurationError("tenant_id", "expected the tenant GUID (AF20013)")
    if code == "AF20020":
        return ConfigurationError("content_types", f"the API refused content type {content_type} (AF20020)")
    return None


class Subscriptions:
    def __init__(self, client: ManagementClient, log: LogFunction):
        self.client = client
        self._log = log

    async def ensure(self, content_types: list[str]) -> list[str]:
        """Start the subscriptions that are not enabled; the content types the app may not read (DLP.All without
        ActivityFeed.ReadDlp), which the caller leaves out instead of stopping."""
        response = await self.client.get(self.client.operation_url("subscriptions/list"), "subscription")
        try:
            data = response.json() if response.body.strip() else []
        except ValueError as error:  # retried as any transient answer
            raise UnreadableAnswer("the list of subscriptions", error) from None
        status = {
            str(entry.get("contentType")).lower(): str(entry.get("status", "")).lower()
            for entry in (data if isinstance(data, list) else [])
            if isinstance(entry, dict)
        }
        missing = [ct for ct in content_types if status.get(ct.lower()) != "enabled"]
        # All at once: at a first start, five round trips in a row would hold back the first listing.
        outcomes = await asyncio.gather(
            *(self._enable(ct, status.get(ct.lower())) for ct in missing), return_exceptions=True
        )
        denied = []
        for content_type, outcome in zip(missing, outcomes):
            if isinstance(outcome, MissingDlpPermission):
                denied.append(content_type)
            elif isinstance(outcome, BaseException):
                raise outcome
        return denied

    async def _enable(self, content_type: str, current: str | None) -> None:
        if current is None:
            await self.start(content_type, "there was none yet")
            return
        self._log(
            f"The subscription to {content_type} was {current}; starting it. Content of the time it was off cannot be "
            "retrieved",
            "warning",
        )
        await self.start(content_type, f"it was {current}")

    async def start(self, content_type: str, reason: str) -> None:
        url = self.client.operation_url("subscriptions/start", contentType=content_type)
        try:
            await self.client.post(url, "subscription")
        except ApiError as error:
            if error.code == ALREADY_ENABLED:
                return
            raise fatal(error, content_type) or error
        self._log(f"Started the subscription to {content_type}: {reason}", "info")

    async def restart(self, content_type: str, error: ApiError) -> None:
        if error.code == DISABLED_BY_ADMIN:
            self._log(
                f"The subscription to {content_type} was disabled by an administrator (AF20023); starting it again. "
                "Content of the time it was off cannot be retrieved. If it keeps being disabled, ask your "
                "Microsoft 365 administrator to leave it on",
                "warning",
            )
            reason = "it was disabled by an administrator"
        else:
            self._log(f"No subscription to {content_type} (AF20022); starting it", "warning")
            reason = "the API had no subscription for it"
        await self.start(content_type, reason)
