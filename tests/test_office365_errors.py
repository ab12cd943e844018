"""What the trigger tells a person: AADSTS and AF errors mapped to the field to fix; transient ones retried."""

from __future__ import annotations

import asyncio

import pytest

from connectors.errors import ConfigurationError
from connectors.retry import Backoff
from office365.auth import TokenProvider, TransientAuthError, explain
from office365.client import ApiError
from office365.subscriptions import fatal


def aad(code: int, error: str = "invalid_client", text: str = "Something.") -> dict:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: 1 Correlation ID: 2 Timestamp: 2026-11-25",
        "error_codes": [code],
    }


@pytest.mark.parametrize(
    "code, error, field, words",
    [
        (7000215, "invalid_client", "client_secret", "Value"),
        (7000222, "invalid_client", "client_secret", "expired"),
        (700016, "unauthorized_client", "client_id", "consent"),
        (90002, "invalid_request", "tenant_id", "tenant"),
        (900023, "invalid_request", "tenant_id", "tenant"),
        (700027, "invalid_client", "certificate", "upload"),
        (65001, "invalid_grant", "client_id", "ActivityFeed.Read"),
        (500011, "invalid_resource", "cloud", "cloud"),
    ],
)
def test_aadsts_codes_name_the_field_and_what_to_do(code, error, field, words):
    problem = explain(aad(code, error))
    assert isinstance(problem, ConfigurationError)
    assert problem.field == field
    assert words in str(problem)
    assert f"AADSTS{code}" in str(problem)


def test_code_found_in_the_description_when_error_codes_are_missing():
    problem = explain({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."})
    assert isinstance(problem, ConfigurationError) and problem.field == "client_secret"


def test_unknown_refusals_are_still_configuration_errors_with_microsofts_words():
    problem = explain(aad(123456, "invalid_client", "Something new happened. More text."))
    assert isinstance(problem, ConfigurationError) and problem.field == "client_secret"
    assert "Something new happened" in str(problem) and "Trace ID" not in str(problem)


@pytest.mark.parametrize("error", ["temporarily_unavailable", "server_error", None])
def test_outages_are_transient(error):
    result = {"error": error, "error_description": "AADSTS50001: try later"} if error else {}
    assert isinstance(explain(result), TransientAuthError)


def test_no_secret_in_the_explanations():
    for code in (7000215, 7000222, 700016, 90002, 700027):
        assert "Emu8Q~" not in str(explain(aad(code, text="Invalid client secret provided. Emu8Q~ is not it")))


@pytest.mark.parametrize(
    "status, code, message, content_type, field",
    [
        (401, "AF10001", "The permission set does not include ActivityFeed.Read.", "Audit.Exchange", "client_id"),
        (401, "AF10001", "The permission set does not include ActivityFeed.ReadDlp.", "DLP.All", "content_types"),
        (401, "AF20010", "The tenant ID passed in the URL does not match", None, "tenant_id"),
        (400, "AF20011", "Specified tenant does not exist.", None, "tenant_id"),
        (400, "AF20012", "Tenant is not configured", None, "tenant_id"),
        (400, "UAL-off", "Tenant 4f6e does not exist.", None, "tenant_id"),
        (400, "AF20020", "Invalid content type", "Audit.Teams", "content_types"),
    ],
)
def test_api_errors_only_a_person_can_fix(status, code, message, content_type, field):
    problem = fatal(ApiError(status, code, message), content_type)
    assert isinstance(problem, ConfigurationError) and problem.field == field


@pytest.mark.parametrize("code", ["AF20022", "AF20023", "AF20024", "AF20055", "AF50000", "AF429"])
def test_other_api_errors_are_not_fatal(code):
    assert fatal(ApiError(400, code, "x"), "Audit.Exchange") is None


# -- the token provider, with Entra replaced by a stub ------------------------------------------------------


class StubEntra:
    def __init__(self, lifetime: float = 3600.0, failures: list | None = None):
        self.lifetime = lifetime
        self.failures = list(failures or [])
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return f"token-{self.calls}", self.lifetime


def provider(stub: StubEntra, logs: list) -> TokenProvider:
    def log(message: str, level: str) -> None:
        logs.append((level, message))

    tokens = TokenProvider(endpoints=None, client_id="c", credential=None, log=log)  # type: ignore[arg-type]
    tokens._acquire = stub  # type: ignore[method-assign]
    return tokens


class Clock:
    def __init__(self):
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now


def test_tokens_are_cached_renewed_before_expiry_and_once_after_a_rejection(monkeypatch):
    import office365.auth

    clock = Clock()  # the provider's clock only: asyncio keeps the real one
    monkeypatch.setattr(office365.auth, "time", clock)

    async def scenario():
        stub, logs = StubEntra(lifetime=101), []
        tokens = provider(stub, logs)
        assert await tokens.token() == "token-1"
        clock.now += 79.9
        assert await tokens.token() == "token-1"  # cached
        clock.now += 0.2  # past 80% of the 100 s sure to be left (whole seconds), before its end: renewed
        assert await tokens.token() == "token-2"
        # Many requests rejected with the same token: one renewal between them.
        renewed = await asyncio.gather(*(tokens.renew_after_rejection("token-2") for _ in range(5)))
        assert renewed == ["token-3"] * 5 and stub.calls == 3
        long_lived = provider(StubEntra(lifetime=3599), [])
        await long_lived.token()
        clock.now += 3297.9
        assert await long_lived.token() == "token-1"
        clock.now += 0.2  # five minutes (and the second of rounding) before expiry
        assert await long_lived.token() == "token-2"
        # A slow answer: the token's life started when Entra issued it, not when its answer arrived.
        slow_stub = StubEntra(lifetime=11)

        def slow_answer():
            clock.now += 3.0
            return slow_stub()

        slow = provider(slow_stub, [])
        slow._acquire = slow_answer  # type: ignore[method-assign]
        await slow.token()
        clock.now += 4.9  # 7.9 s after asking, under 80% of 10 s
        assert await slow.token() == "token-1"
        clock.now += 0.2  # 8.1 s after asking, only 5.1 after the answer came
        assert await slow.token() == "token-2"

    asyncio.run(scenario())


def test_an_entra_outage_is_retried_and_logged_once_and_its_end_too(monkeypatch):
    async def scenario():
        outage = [TransientAuthError("token endpoint unreachable (ConnectionError)")] * 3
        stub, logs = StubEntra(failures=outage), []
        tokens = provider(stub, logs)
        tokens._backoff = Backoff(base=0.01, cap=0.02)
        assert await tokens.token() == "token-4"
        assert [level for level, _ in logs] == ["warning", "info"]

    asyncio.run(scenario())


def test_a_wrong_secret_is_not_retried():
    async def scenario():
        stub = StubEntra(failures=[explain(aad(7000215))])
        with pytest.raises(ConfigurationError):
            await provider(stub, []).token()
        assert stub.calls == 1

    asyncio.run(scenario())
