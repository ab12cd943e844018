"""App-only tokens from Microsoft Entra ID through MSAL: cached, renewed before expiry, errors made actionable.

An AADSTS error that only a person can fix (wrong secret, unknown app, wrong tenant, certificate not
registered, consent missing) becomes a ``ConfigurationError`` naming the field and what to do: the trigger
logs it once as critical and stops. Anything else (token endpoint down, 5xx, network) is transient: retried
with backoff, logged once per outage.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque

import msal
import msal.exceptions
import requests

from connectors import proxy
from connectors.errors import ConfigurationError
from connectors.logs import LogFunction, Redactor
from connectors.logs import OnceLogger
from connectors.retry import Backoff, RetryOn, retrying
from connectors.tls import ca_bundle
from office365.config import Credential, Endpoints

# AADSTS code -> (configuration field, what to fix)
AADSTS_HELP: dict[int, tuple[str, str]] = {
    7000215: (
        "client_secret",
        "Microsoft Entra refused the client secret (AADSTS7000215): copy the secret's *Value* "
        "(not its Secret ID) from the app registration's Certificates & secrets page",
    ),
    7000222: (
        "client_secret",
        "the client secret has expired (AADSTS7000222): create a new secret on the app "
        "registration and update the configuration",
    ),
    7000218: (
        "client_secret",
        "no client secret or certificate reached Microsoft Entra (AADSTS7000218): give "
        "`client_secret`, or `certificate` and `private_key`",
    ),
    700016: (
        "client_id",
        "no application with this client id exists in the tenant (AADSTS700016): check "
        "`client_id` and `tenant_id`, and that an administrator consented to the app in this tenant",
    ),
    7000112: ("client_id", "the application is disabled (AADSTS7000112): enable it in Microsoft Entra"),
    700025: (
        "client_id",
        "the app is registered as a public client (AADSTS700025): it needs a client secret or "
        "certificate (a confidential client)",
    ),
    65001: (
        "client_id",
        "admin consent is missing (AADSTS65001): grant admin consent for the Office 365 "
        "Management API permission ActivityFeed.Read (and ActivityFeed.ReadDlp for DLP.All)",
    ),
    90002: (
        "tenant_id",
        "tenant not found (AADSTS90002): use the Directory (tenant) ID of your Microsoft Entra "
        "tenant, and check `cloud`",
    ),
    900023: ("tenant_id", "the tenant identifier is invalid (AADSTS900023): use the Directory (tenant) ID GUID"),
    90013: ("tenant_id", "the tenant identifier is invalid (AADSTS90013)"),
    700027: (
        "certificate",
        "Microsoft Entra refused the certificate assertion (AADSTS700027): upload this "
        "certificate to the app registration (Certificates & secrets) and check that `private_key` belongs to it",
    ),
    700023: (
        "certificate",
        "the certificate assertion was refused (AADSTS700023): check the certificate " "registered on the app",
    ),
    500011: (
        "cloud",
        "the Office 365 Management API is not available in this tenant for this cloud "
        "(AADSTS500011): check `cloud` (enterprise, gcc, gcc_high, dod)",
    ),
    53003: ("client_id", "blocked by a Conditional Access policy (AADSTS53003): exclude this workload identity"),
}

# OAuth error codes that mean "the configuration is wrong", whatever the AADSTS code.
_FATAL_OAUTH_ERRORS = {"invalid_client", "unauthorized_client", "invalid_request", "invalid_scope", "invalid_grant"}
_AADSTS = re.compile(r"AADSTS(\d+)")


class TransientAuthError(Exception):
    pass


def explain(result: dict) -> ConfigurationError | TransientAuthError:
    """An MSAL error result as what to do about it."""
    codes = [int(code) for code in result.get("error_codes") or [] if str(code).isdigit()]
    description = str(result.get("error_description") or "")
    codes += [int(code) for code in _AADSTS.findall(description)]
    for code in codes:
        if code in AADSTS_HELP:
            field, message = AADSTS_HELP[code]
            return ConfigurationError(field, message)
    error = str(result.get("error") or "unknown_error")
    # Microsoft's first sentence (it never holds the secret) tells the user what Entra saw.
    first = description.split("\r\n")[0].split(". ")[0][:300]
    if error in _FATAL_OAUTH_ERRORS:
        field = "client_secret" if error == "invalid_client" else "client_id"
        return ConfigurationError(field, f"Microsoft Entra refused the app's sign-in ({error}: {first})")
    return TransientAuthError(f"{error}: {first}")


class TokenProvider:
    """One MSAL confidential client; tokens kept here and renewed before they expire."""

    RENEW_FRACTION = 0.8
    RENEW_MARGIN = 300.0

    def __init__(
        self,
        endpoints: Endpoints,
        client_id: str,
        credential: Credential,
        log: LogFunction,
        timeout: float = 30.0,
        redactor: Redactor | None = None,
    ):
        self.endpoints = endpoints
        self.client_id = client_id
        self.credential = credential
        self._log = log
        self._timeout = timeout
        self._app: msal.ConfidentialClientApplication | None = None
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self._backoff = Backoff(base=1.0, cap=15.0)
        self._outage = OnceLogger(log)
        self._redactor = redactor
        self._masked: deque[str] = deque()  # the current token and the one before (requests may still carry it)
        self._abandon: asyncio.Event | None = None  # set by reset() to give up the renewal waiting on Entra

    async def token(self) -> str:
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token
        async with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                await self._renew()
        return self._token  # type: ignore[return-value]

    async def renew_after_rejection(self, rejected: str) -> str:
        """The API answered 401 with ``rejected``: get a new token once (unless another task already did)."""
        async with self._lock:
            if self._token == rejected:
                await self._renew()
        return self._token  # type: ignore[return-value]

    def reset(self) -> None:
        """A new MSAL client (new connections to Entra) and a new token at the next request. A renewal waiting on
        Entra now is abandoned: its thread ends with its read timeout, its answer unused."""
        self._app = None
        self._renew_at = 0.0
        if self._abandon is not None:
            self._abandon.set()

    async def _attempt(self) -> tuple[str, float] | None:
        """One request for a token; None when ``reset`` abandoned it."""
        self._abandon = abandon = asyncio.Event()
        attempt = asyncio.ensure_future(asyncio.to_thread(self._acquire))
        reset = asyncio.ensure_future(abandon.wait())
        try:
            await asyncio.wait([attempt, reset], return_when=asyncio.FIRST_COMPLETED)
        finally:
            reset.cancel()
            self._abandon = None
            if not attempt.done():  # abandoned, or its caller cancelled: nobody reads its outcome
                attempt.add_done_callback(lambda done: done.cancelled() or done.exception())
        return attempt.result() if attempt.done() else None

    async def _renew(self) -> None:
        asked, (token, lifetime) = await retrying(
            self._ask, RetryOn(TransientAuthError), backoff=lambda: self._backoff, on_failure=self._failed,
            on_success=self._answered,
        )
        self._mask(token)
        self._token = token
        self._renew_at = asked + self.renewal_delay(lifetime)

    def _failed(self, error: BaseException, failures: int) -> None:
        self._outage.began(f"Getting a token from Microsoft Entra failed, retrying: {error}")

    def _answered(self) -> None:
        self._outage.ended("Microsoft Entra answered again")
        self._backoff.reset()  # also when an earlier renewal, cancelled during an outage, left it part way

    async def _ask(self) -> tuple[float, tuple[str, float]]:
        """When it asked, and Entra's answer: asked again at once when ``reset`` abandoned the question."""
        while True:
            asked = time.monotonic()
            answer = await self._attempt()
            if answer is not None:
                return asked, answer

    @classmethod
    def renewal_delay(cls, lifetime: float) -> float:
        """Seconds from asking for a token to renewing it: five minutes before it expires, at 80% of its life if it
        is short. Counted from the question, not the answer (the answer may take a while to come), and on a second
        less than stated: `exp` and `expires_in` are whole seconds, so a token may expire up to a second early."""
        usable = max(lifetime - 1.0, 0.0)
        return max(usable * cls.RENEW_FRACTION, usable - cls.RENEW_MARGIN)

    def _mask(self, token: str) -> None:
        """A token joins the log redaction list before any request carries it; the one two renewals back (expired
        or about to be) leaves it."""
        if self._redactor is None:
            return
        self._redactor.add([token])
        self._masked.append(token)
        if len(self._masked) > 2:
            self._redactor.discard([self._masked.popleft()])

    # -- blocking part (runs in a thread) -------------------------------------------------------------------

    def _client(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            session = requests.Session()
            session.verify = ca_bundle()
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self.credential.for_msal(),
                    authority=self.endpoints.authority,
                    http_client=_TimeoutSession(session, self._timeout),
                    # Microsoft's instance discovery knows only Microsoft's hosts: off for proxies and emulators.
                    instance_discovery=False if self.endpoints.custom_login else None,
                    token_cache=msal.TokenCache(),
                )
            except ValueError as error:
                # MSAL's tenant discovery answered 4xx: the tenant does not exist in this cloud.
                if "tenant" in str(error).lower() or "authority" in str(error).lower():
                    raise ConfigurationError(
                        "tenant_id",
                        f"Microsoft Entra does not know this tenant at {self.endpoints.authority}: use the Directory "
                        "(tenant) ID of your tenant and check `cloud` (and `login_url` if set)",
                    ) from None
                raise
            except (requests.RequestException, OSError) as error:
                raise self._network_error(error, f"{self.endpoints.authority} unreachable") from None
        return self._app

    def _acquire(self) -> tuple[str, float]:
        app = self._client()
        # We hold the token ourselves: empty MSAL's cache so a renewal really asks Entra (after a 401 too).
        cache = app.token_cache
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)
        try:
            result = app.acquire_token_for_client(scopes=[self.endpoints.scope])
        except (requests.RequestException, OSError) as error:
            raise self._network_error(error, "token endpoint unreachable") from None
        except msal.exceptions.MsalServiceError as error:  # a 5xx answer without an OAuth error body
            raise TransientAuthError(str(error)[:120]) from None
        except ValueError as error:  # MSAL's own parse errors of a broken answer (e.g. an HTML error page)
            raise TransientAuthError(f"unreadable token answer ({str(error)[:120]})") from None
        if not result or "access_token" not in result:
            raise explain(result or {})
        return result["access_token"], float(result.get("expires_in") or 3599)

    def _network_error(self, error: BaseException, what: str) -> ConfigurationError | TransientAuthError:
        """A proxy's refusal said as such (403, 407: a configuration error; others retried), else transient."""
        refused = proxy.refusal(error, self.endpoints.authority)
        if refused is not None and refused.fatal:
            return refused.configuration_error()
        if refused is not None:
            return TransientAuthError(f"{what}: {refused.message()}")
        return TransientAuthError(f"{what} ({type(error).__name__})")


class _TimeoutSession:
    """MSAL's http_client with a timeout on every call (MSAL passes none by default)."""

    def __init__(self, session: requests.Session, timeout: float):
        self._session = session
        self._timeout = timeout

    def get(self, url, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return self._session.get(url, **kwargs)

    def post(self, url, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return self._session.post(url, **kwargs)

    def close(self):
        self._session.close()
