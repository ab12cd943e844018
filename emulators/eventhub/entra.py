"""Entra ID tokens on $cbs (`put-token` of type `jwt`), checked as Event Hubs does: the signature with the
authority's published keys, the issuer, the audience (https://eventhubs.azure.net, so a token meant for Storage or
another API is refused) and the expiry; then the principal's Azure RBAC roles on the namespace give its claims."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import jwt
from jwt.algorithms import RSAAlgorithm

from .auth import ALL_CLAIMS, TokenCheck

AUDIENCES = ("https://eventhubs.azure.net", "https://servicebus.azure.net")
ROLE_CLAIMS = {
    "Azure Event Hubs Data Receiver": frozenset({"Listen"}),
    "Azure Event Hubs Data Sender": frozenset({"Send"}),
    "Azure Event Hubs Data Owner": ALL_CLAIMS,
}


def parse_role(spec: str) -> tuple[str, str]:
    """``PRINCIPAL=ROLE`` (the principal: an application or managed identity client id, or an object id)."""
    principal, sep, role = spec.partition("=")
    if not sep or role.strip() not in ROLE_CLAIMS:
        raise ValueError(f"expected PRINCIPAL=ROLE with a role among {sorted(ROLE_CLAIMS)}: {spec!r}")
    return principal.strip().lower(), role.strip()


class EntraAuthority:
    """Tokens of one tenant of the Entra emulator (``https://HOST:PORT/TENANT``), for one service: its audiences
    and what each of its roles grants (Event Hubs by default; emulators/storage_roles.py for Storage)."""

    def __init__(self, authority: str, ca_file: str | None = None,
                 roles: Mapping[str, Iterable[str]] | None = None, audiences: tuple[str, ...] = AUDIENCES,
                 role_claims: Mapping[str, frozenset[str]] = ROLE_CLAIMS, service: str = "Event Hubs") -> None:
        parts = urlsplit(authority.rstrip("/"))
        self.tenant = parts.path.strip("/").split("/")[0]
        if parts.scheme != "https" or not self.tenant:
            raise ValueError(f"expected the authority as https://HOST[:PORT]/TENANT: {authority!r}")
        self.authority = authority.rstrip("/")
        self.ca_file = ca_file
        # v1 tokens (what the emulator and Event Hubs tokens use) and v2 ones.
        self.issuers = {f"https://sts.windows.net/{self.tenant}/",
                        f"{parts.scheme}://{parts.netloc}/{self.tenant}/v2.0"}
        self.roles = {principal.lower(): set(assigned) for principal, assigned in (roles or {}).items()}
        self.keys: dict[str, object] = {}
        self.audiences, self.role_claims, self.service = audiences, role_claims, service

    def load_keys(self) -> None:
        """The authority's signing keys (blocking: once at start)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(f"{self.authority}/discovery/v2.0/keys", context=context,  # noqa: S310
                                    timeout=10) as answer:
            jwks = json.load(answer)
        self.keys = {key["kid"]: RSAAlgorithm.from_jwk(key) for key in jwks["keys"]}

    def claims_of(self, principals: Iterable[str]) -> frozenset[str]:
        granted: set[str] = set()
        for principal in principals:
            for role in self.roles.get(principal.lower(), ()):
                granted |= self.role_claims[role]
        return frozenset(granted)

    def check(self, token: str, now: float | None = None) -> TokenCheck:
        try:
            key = self.keys.get(jwt.get_unverified_header(token).get("kid"))
            if key is None:
                return TokenCheck(401, "InvalidSignature: the token was not signed by a key of the tenant's issuer.")
            claims = jwt.decode(token, key, algorithms=["RS256"],  # type: ignore[arg-type]
                                options={"require": ["exp", "aud", "iss"], "verify_aud": False, "verify_exp": False})
        except jwt.InvalidSignatureError:
            return TokenCheck(401, "InvalidSignature: the token's signature is invalid.")
        except jwt.PyJWTError as exc:
            return TokenCheck(401, f"InvalidToken: the token is not a valid JWT ({exc}).")
        audience = str(claims["aud"]).rstrip("/")
        if audience not in self.audiences:
            return TokenCheck(401, f"InvalidAudience: the token audience '{claims['aud']}' is not valid for "
                                   f"{self.service} (expected {self.audiences[0]}).")
        if claims["iss"] not in self.issuers:
            return TokenCheck(401, f"InvalidIssuer: Token issuer '{claims['iss']}' is invalid.")
        expires = float(claims["exp"])
        if expires <= (time.time() if now is None else now):
            return TokenCheck(401, f"ExpiredToken: The token is expired. Expiration time: "
                                   f"'{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(expires))}'.")
        principals = [str(claims[name]) for name in ("appid", "oid", "azp") if claims.get(name)]
        principal = principals[0] if principals else None
        return TokenCheck(202, "Accepted", "", expires, self.claims_of(principals), principal)
