"""Entra ID (login) side: the discovery documents MSAL fetches, the client-credentials token endpoint, and
validation of the access tokens it issues.

What msal 1.39 asks for, given authority https://HOST/{tenant}:
- instance discovery `GET {instance_discovery_url}?authorization_endpoint=...&api-version=1.0` — only when the
  client passes `instance_discovery=<url>`; by default MSAL sends it to login.microsoftonline.com (not us), so
  offline clients must pass `instance_discovery=False` / `validate_authority=False` (MSAL) or
  `disable_instance_discovery=True` (azure-identity). We answer it anyway, on any tenant path.
- tenant discovery `GET /{tenant}/v2.0/.well-known/openid-configuration`; MSAL then uses its token_endpoint.

Tokens are issued for the Office 365 Management API, Event Hubs and Storage, each with its resource as `aud` (the
services check it: a token reaches only its audience). Besides the app's secret and certificate: its federated
credential (workload identity: a service account token signed by `federated_token`, issuer FEDERATED_ISSUER), and a
managed identity through the App Service / Container Apps endpoint (`GET /msi/token`, `X-IDENTITY-HEADER`) and IMDS
(`GET /metadata/identity/oauth2/token`, `Metadata: true`; azure-identity reaches it with
AZURE_POD_IDENTITY_AUTHORITY_HOST).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import time
import uuid
from urllib.parse import unquote, urlparse

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from .config import EmulatorConfig
from .policy import RequestPolicy
from .responses import aad_error, json_response, reset_connection
from .stats import Stats
from .tls import TlsMaterial

RESOURCE = "https://manage.office.com"
EVENTHUBS_RESOURCE = "https://eventhubs.azure.net"
STORAGE_RESOURCE = "https://storage.azure.com"
RESOURCES = (RESOURCE, EVENTHUBS_RESOURCE, STORAGE_RESOURCE)
ROLES = ["ActivityFeed.Read", "ActivityFeed.ReadDlp"]  # app roles of the Management API only; Azure RBAC is per service
FEDERATED_ISSUER = "https://kubernetes.emulator.invalid"  # the cluster's service account token issuer
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_CLOCK_SKEW = 300
GENERIC_TENANTS = ("common", "organizations", "consumers")
ASSERTION_ALGORITHMS = ["RS256", "PS256"]  # what MSAL and azure-identity sign client assertions with


class InvalidToken(Exception):
    pass


class EntraService:
    def __init__(self, config: EmulatorConfig, tls: TlsMaterial, stats: Stats, policy: RequestPolicy):
        self.config = config
        self.tls = tls
        self.stats = stats
        self.policy = policy
        self._key = tls.token_signing_key
        self._public_key = self._key.public_key()
        public_der = self._public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.kid = _b64url(hashlib.sha1(public_der).digest())  # noqa: S324 - an identifier, like Entra's
        self._verified: dict[str, dict] = {}  # access token -> claims: one RSA verify per token, not per request

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/{tenant}/discovery/instance", self.instance_discovery),
            web.get("/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration),
            web.get("/{tenant}/.well-known/openid-configuration", self.openid_configuration),
            web.get("/{tenant}/discovery/v2.0/keys", self.jwks),
            web.get("/{tenant}/discovery/keys", self.jwks),
            web.post("/{tenant}/oauth2/v2.0/token", self.token),
            web.post("/{tenant}/oauth2/token", self.token),
            web.get("/msi/token", self.app_service_token),
            web.get("/metadata/identity/oauth2/token", self.imds_token),
        ]

    # ------------------------------------------------------------------ discovery
    def _known_tenant(self, tenant: str) -> bool:
        return tenant.lower() in (self.config.tenant_id.lower(), *GENERIC_TENANTS)

    def _tenant_not_found(self, request: web.Request, tenant: str) -> web.Response:
        self.stats.token_errors["90002"] += 1
        return aad_error(
            request,
            400,
            "invalid_request",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into "
            "the correct cloud. Check with your subscription administrator, this may happen if there are no "
            "active subscriptions for the tenant.",
        )

    async def instance_discovery(self, request: web.Request) -> web.Response:
        self.stats.requests["discovery"] += 1
        authorize = request.query.get("authorization_endpoint", "")
        segments = [s for s in urlparse(authorize).path.split("/") if s]
        tenant = segments[0] if segments else request.match_info["tenant"]
        host = request.host
        return json_response(
            {
                "tenant_discovery_endpoint": f"https://{host}/{tenant}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }
        )

    async def openid_configuration(self, request: web.Request) -> web.Response:
        self.stats.requests["discovery"] += 1
        tenant = request.match_info["tenant"]
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        base = f"https://{request.host}"
        v2 = "/v2.0/" in request.path
        suffix = "/v2.0" if v2 else ""
        oauth = f"{base}/{tenant}/oauth2{'/v2.0' if v2 else ''}"
        issuer_tenant = self.config.tenant_id if tenant.lower() not in GENERIC_TENANTS else "{tenantid}"
        return json_response(
            {
                "token_endpoint": f"{oauth}/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/{tenant}/discovery{suffix}/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/{issuer_tenant}{suffix}",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{base}/oidc/userinfo",
                "authorization_endpoint": f"{oauth}/authorize",
                "device_authorization_endpoint": f"{oauth}/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{oauth}/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "roles"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        self.stats.requests["discovery"] += 1
        jwk = RSAAlgorithm.to_jwk(self._public_key, as_dict=True)
        return json_response({"keys": [{**jwk, "use": "sig", "alg": "RS256", "kid": self.kid}]})

    # ------------------------------------------------------------------ token endpoint
    async def token(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests["token"] += 1
        await self.policy.add_latency()
        if self.config.token_down == "reset":
            self.stats.faults["token_reset"] += 1
            reset_connection(request)
            raise asyncio.CancelledError()  # no answer at all, like an unreachable endpoint
        if self.config.token_down == "503":
            self.stats.faults["token_503"] += 1
            self.stats.token_errors["90033"] += 1
            return aad_error(
                request, 503, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
            )
        response = await self._token(request)
        self.stats.responses[f"token {response.status}"] += 1
        return response

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await request.post()
        v2 = request.path.endswith("/v2.0/token")
        if tenant.lower() != self.config.tenant_id.lower():
            return self._tenant_not_found(request, tenant)

        def fail(status: int, error: str, code: int, description: str) -> web.Response:
            self.stats.token_errors[str(code)] += 1
            return aad_error(request, status, error, code, description)

        grant_type = form.get("grant_type", "")
        if grant_type != "client_credentials":
            return fail(
                400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
            )

        basic_id, basic_secret = _basic_credentials(request)
        client_id = form.get("client_id") or basic_id
        if not client_id:
            return fail(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        if client_id.lower() != self.config.client_id.lower():
            return fail(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen "
                "if the application has not been installed by the administrator of the tenant or consented to by any "
                "user in the tenant. You may have sent your authentication request to the wrong tenant.",
            )

        requested = form.get("scope", "") if v2 else form.get("resource", "")
        resource, scope_error = _check_resource(requested, v2)
        if scope_error:
            return fail(400, *scope_error)

        secret = form.get("client_secret") or basic_secret
        assertion = form.get("client_assertion")
        if secret:
            if secret != self.config.client_secret:
                return fail(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                    f"value, not the client secret ID, for a secret added to app '{client_id}'.",
                )
            credential = "client_secret"
        elif assertion:
            if form.get("client_assertion_type") != JWT_BEARER:
                return fail(401, "invalid_client", 700027, f"client_assertion_type must be '{JWT_BEARER}'.")
            if _unverified_issuer(assertion) == FEDERATED_ISSUER:
                problem = self._federated_problem(assertion)
                if problem:
                    return fail(400, "invalid_client", *problem)
                credential = "federated"
            else:
                problem = self._assertion_problem(assertion, request, tenant)
                if problem:
                    return fail(401, "invalid_client", 700027, f"Client assertion failed validation: {problem}.")
                credential = "client_assertion"
        else:
            return fail(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        self.stats.tokens_issued[credential] += 1
        return json_response(
            self._issue(client_id, credential, v2, resource),
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _assertion_problem(self, assertion: str, request: web.Request, tenant: str) -> str | None:
        registered = self.tls.client_certificate
        try:
            header = jwt.get_unverified_header(assertion)
            if "x5t#S256" in header:
                matches = _thumbprint(header["x5t#S256"]) == registered.sha256_thumbprint
            elif "x5t" in header:
                matches = _thumbprint(header["x5t"]) == registered.sha1_thumbprint
            else:
                return "the JWT header has neither x5t#S256 nor x5t"
            if not matches:
                return "the certificate used to sign the client assertion is not registered on the application"
            # Signature, exp and nbf (with Entra's clock skew) by PyJWT; aud, iss and sub below, as Entra words them.
            claims = jwt.decode(
                assertion,
                registered.certificate.public_key(),
                algorithms=ASSERTION_ALGORITHMS,
                leeway=ASSERTION_CLOCK_SKEW,
                options={"require": ["exp"], "verify_aud": False, "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            return "the assertion is expired (exp)"
        except jwt.ImmatureSignatureError:
            return "the assertion is not yet valid (nbf)"
        except jwt.InvalidSignatureError:
            return "the signature does not verify with the registered certificate"
        except jwt.InvalidAlgorithmError:
            return f"unsupported alg (expected one of {', '.join(ASSERTION_ALGORITHMS)})"
        except jwt.PyJWTError as exc:
            return f"the assertion is not a valid JWT ({exc})"
        client_id = self.config.client_id.lower()
        if str(claims.get("iss", "")).lower() != client_id or str(claims.get("sub", "")).lower() != client_id:
            return "iss and sub must both be the application's client id"
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        if not any(_is_token_endpoint(a, tenant, request) for a in audiences):
            return f"aud {claims.get('aud')!r} is not this tenant's token endpoint"
        return None

    # ------------------------------------------------------------------ workload identity (federated credential)
    @functools.cached_property
    def _federation_key(self):
        from cryptography.hazmat.primitives.asymmetric import rsa

        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def federated_token(self, subject: str | None = None, lifetime: int = 3600,
                        audience: str = FEDERATED_AUDIENCE) -> str:
        """A service account token as Kubernetes projects it into AZURE_FEDERATED_TOKEN_FILE."""
        now = int(time.time())
        claims = {"iss": FEDERATED_ISSUER, "sub": subject or self.config.federated_subject, "aud": [audience],
                  "iat": now, "nbf": now, "exp": now + lifetime}
        return jwt.encode(claims, self._federation_key, algorithm="RS256", headers={"kid": "cluster"})

    def _federated_problem(self, assertion: str) -> tuple[int, str] | None:
        try:
            claims = jwt.decode(assertion, self._federation_key.public_key(), algorithms=["RS256"],
                                audience=FEDERATED_AUDIENCE, options={"require": ["exp", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            return 700024, "Client assertion is not within its valid time range."
        except jwt.InvalidAudienceError:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            return 700212, (f"No matching federated identity record found for presented assertion audience "
                            f"'{unverified.get('aud')}'.")
        except jwt.PyJWTError as exc:
            return 700027, f"Client assertion failed signature validation ({exc})."
        if claims["sub"] != self.config.federated_subject:
            return 70021, (f"No matching federated identity record found for presented assertion. Assertion Issuer: "
                           f"'{FEDERATED_ISSUER}'. Assertion Subject: '{claims['sub']}'. Assertion Audience: "
                           f"'{FEDERATED_AUDIENCE}'.")
        return None

    # ------------------------------------------------------------------ managed identity endpoints
    async def app_service_token(self, request: web.Request) -> web.Response:
        """App Service / Container Apps: IDENTITY_ENDPOINT, with IDENTITY_HEADER's value in X-IDENTITY-HEADER."""
        self.stats.requests["managed_identity"] += 1
        if request.headers.get("X-IDENTITY-HEADER") != self.config.identity_header:
            return json_response({"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong."}, status=401)
        return self._managed_identity_token(request, app_service=True)

    async def imds_token(self, request: web.Request) -> web.Response:
        """The Instance Metadata Service of virtual machines (and AKS pod identity)."""
        self.stats.requests["managed_identity"] += 1
        if request.headers.get("Metadata", "").lower() != "true":
            return json_response({"error": "invalid_request", "error_description": "Required metadata header not "
                                  "specified"}, status=400)
        return self._managed_identity_token(request, app_service=False)

    def _managed_identity_token(self, request: web.Request, app_service: bool) -> web.Response:
        requested = request.query.get("resource", "")
        resource, problem = _check_resource(requested, v2=False)
        if problem:
            return json_response({"error": "invalid_resource", "error_description": problem[2]}, status=400)
        identity = self.config.managed_identity_client_id
        asked = request.query.get("client_id")
        if asked and asked.lower() != identity.lower():
            # What both endpoints answer for a user-assigned identity not assigned to the resource.
            return json_response({"error": "invalid_request", "error_description": "Identity not found"}, status=400)
        self.stats.tokens_issued["app_service_identity" if app_service else "imds_identity"] += 1
        issued = self._issue(identity, "managed_identity", False, resource)
        if app_service:
            return json_response({"access_token": issued["access_token"], "expires_on": issued["expires_on"],
                                  "resource": issued["resource"], "token_type": "Bearer", "client_id": identity})
        return json_response({**issued, "client_id": identity})

    # ------------------------------------------------------------------ access tokens
    def _issue(self, client_id: str, credential: str, v2: bool, resource: str = RESOURCE) -> dict:
        now = int(time.time() + self.config.token_skew_seconds)
        lifetime = int(self.config.token_lifetime)
        tid = self.config.tenant_id
        kind = "mi" if credential == "managed_identity" else "sp"
        service_principal = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}:{tid}:{client_id}"))
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{tid}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "app_displayname": "Office 365 emulator client",
            "appid": client_id,
            "appidacr": "2" if credential == "client_assertion" else "1",
            "idp": f"https://sts.windows.net/{tid}/",
            "idtyp": "app",
            "oid": service_principal,
            **({"roles": ROLES} if resource == RESOURCE else {}),
            "sub": service_principal,
            "tid": tid,
            "uti": _b64url(uuid.uuid4().bytes),
            "ver": "1.0",
        }
        access_token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid})
        if v2:
            return {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": access_token,
            }
        # v1 answers carry the numbers as strings.
        return {
            "token_type": "Bearer",
            "expires_in": str(lifetime),
            "ext_expires_in": str(lifetime),
            "expires_on": str(now + lifetime),
            "not_before": str(now),
            "resource": resource,
            "access_token": access_token,
        }

    # ------------------------------------------------------------------ access tokens presented to the API
    def validate_access_token(self, token: str, at: float) -> dict:
        """The token's claims if it was valid `at` (epoch seconds: when its request arrived, see arrival.py)."""
        claims = self._verified.get(token)
        if claims is None:
            try:
                if jwt.get_unverified_header(token).get("kid") != self.kid:
                    raise InvalidToken("the token was not signed by this issuer")
                # Expiry is checked below on every request, cached or not; the rest once per token.
                claims = jwt.decode(
                    token,
                    self._public_key,
                    algorithms=["RS256"],
                    audience=RESOURCE,
                    options={"require": ["exp", "aud"], "verify_exp": False},
                )
            except jwt.InvalidAudienceError as exc:
                raise InvalidToken(f"the token audience is not {RESOURCE}") from exc
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"the token is malformed or its signature is invalid ({exc})") from exc
            if len(self._verified) > 50_000:
                self._verified.clear()
            self._verified[token] = claims
        if claims["exp"] <= at:
            raise InvalidToken("the token is expired")
        return claims


def _b64url(data: bytes) -> str:
    return base64url_encode(data).decode("ascii")


def _thumbprint(value) -> bytes | None:
    """The certificate hash an x5t / x5t#S256 header carries (base64url), None when it is not one."""
    try:
        return base64url_decode(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return "", ""
    try:
        decoded = base64.b64decode(header[6:].strip()).decode("utf-8")
    except ValueError:
        return "", ""
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id), unquote(secret)


def _unverified_issuer(assertion: str) -> str | None:
    try:
        return str(jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")).rstrip("/")
    except jwt.PyJWTError:
        return None


def _check_resource(requested: str, v2: bool) -> tuple[str, tuple[str, int, str] | None]:
    """The resource a token is asked for, or why it cannot be issued."""
    if v2:
        scopes = requested.split()
        if not scopes or not all(s.endswith("/.default") for s in scopes):
            return "", (
                "invalid_scope",
                1002012,
                f"The provided value for scope {requested} is not valid. Client credential flows must have a scope "
                "value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resources = [s[: -len("/.default")].rstrip("/") for s in scopes]
    else:
        resources = [requested.rstrip("/")]
    for resource in resources:
        if resource.lower() not in RESOURCES:
            return "", (
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant. This can happen if the "
                "application has not been installed by the administrator of the tenant.",
            )
    return resources[0].lower(), None


def _is_token_endpoint(audience, tenant: str, request: web.Request) -> bool:
    if not isinstance(audience, str):
        return False
    parsed = urlparse(audience)
    hosts = {"127.0.0.1", "localhost", "::1", "login.microsoftonline.com", (request.url.host or "").lower()}
    paths = {f"/{tenant}/oauth2/v2.0/token".lower(), f"/{tenant}/oauth2/token".lower()}
    return (
        parsed.scheme == "https"
        and (parsed.hostname or "").lower() in hosts
        and parsed.path.rstrip("/").lower() in paths
    )
