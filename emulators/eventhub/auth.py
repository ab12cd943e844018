"""Shared access signature checks (the `put-token` of $cbs and the `security_token` of $management)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qs, quote, quote_plus, urlparse

if TYPE_CHECKING:
    from .entra import EntraAuthority

SAS_TOKEN_TYPE = "servicebus.windows.net:sastoken"
JWT_TOKEN_TYPE = "jwt"
ALL_CLAIMS = frozenset({"Listen", "Send", "Manage"})  # what the namespace's shared access key grants


class TokenCheck(NamedTuple):
    status: int  # 202 accepted, 401 refused
    description: str
    audience_path: str | None = None  # entity path the token grants ("" = whole namespace)
    expires_at: float | None = None
    claims: frozenset[str] = ALL_CLAIMS
    principal: str | None = None  # an Entra token's application or object id


def audience_path(audience: str) -> str:
    """'sb://host:port/hub/...' -> 'hub/...' (lower case, no slashes at the ends)."""
    return urlparse(audience).path.strip("/").lower()


def _signatures(key: str, sr: str, se: str) -> set[str]:
    # SDKs differ in how they escape (and sometimes lower-case) the resource URI before signing
    candidates = {quote_plus(sr), quote_plus(sr.lower()), quote(sr, safe=""), quote(sr.lower(), safe="")}
    key_bytes = key.encode("utf-8")
    return {
        base64.b64encode(hmac.new(key_bytes, f"{uri}\n{se}".encode("utf-8"), hashlib.sha256).digest()).decode()
        for uri in candidates
    }


def check_sas_token(token: str, keys: dict[str, str], now: float | None = None) -> TokenCheck:
    """Validate `SharedAccessSignature sr=..&sig=..&se=..&skn=..` against the configured keys."""
    if not isinstance(token, str) or not token.startswith("SharedAccessSignature "):
        return TokenCheck(401, "InvalidSignature: the token is not a shared access signature.")
    fields = {k.lower(): v[0] for k, v in parse_qs(token[len("SharedAccessSignature ") :]).items()}
    sr, sig, se, skn = fields.get("sr"), fields.get("sig"), fields.get("se"), fields.get("skn")
    if not (sr and sig and se and skn):
        return TokenCheck(401, "InvalidSignature: the token misses sr, sig, se or skn.")
    key = keys.get(skn)
    if key is None:
        return TokenCheck(401, f"Unauthorized: the shared access key name '{skn}' is unknown.")
    if not any(hmac.compare_digest(sig, candidate) for candidate in _signatures(key, sr, se)):
        return TokenCheck(401, f"InvalidSignature: the token has an invalid signature (key name '{skn}').")
    try:
        expiry = float(se)
    except ValueError:
        return TokenCheck(401, "InvalidSignature: 'se' is not a number.")
    if expiry < (time.time() if now is None else now):
        return TokenCheck(401, "ExpiredToken: the token has expired.")
    return TokenCheck(202, "Accepted", audience_path(sr), expiry)


def check_token(token: object, token_type: str | None, keys: dict[str, str],
                entra: EntraAuthority | None = None) -> TokenCheck:
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    if token_type is None and isinstance(token, str) and not token.startswith("SharedAccessSignature "):
        token_type = JWT_TOKEN_TYPE  # $management's security_token carries either kind, without a type
    if token_type == JWT_TOKEN_TYPE:
        if entra is None or not isinstance(token, str):
            # No authority configured: accepted unchecked for the whole namespace.
            return TokenCheck(202, "Accepted", "", None)
        return entra.check(token)
    return check_sas_token(token, keys)  # type: ignore[arg-type]
