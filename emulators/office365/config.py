"""Emulator settings: one dataclass shared by the CLI, the in-process API and POST /_emulator/control."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from emulators import fixtures

CONTENT_TYPES = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)
FAULT_KINDS = ("5xx", "reset", "timeout")
TOKEN_DOWN_MODES = ("", "503", "reset")

# Fixed GUIDs so that runs are reproducible; overridable from the CLI.
DEFAULT_TENANT_ID = "4f6e2a1c-8d3b-4e5f-9a7c-2b1d0e3f4a5b"
DEFAULT_CLIENT_ID = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
DEFAULT_CLIENT_SECRET = "Emu8Q~local.office365.emulator.secret-0123456789"
# The managed identity the emulator's App Service and IMDS endpoints sign in as, and the App Service header secret.
DEFAULT_MANAGED_IDENTITY_CLIENT_ID = "3e1d5c7a-2b4f-4c6d-9e8f-0a1b2c3d4e5f"
DEFAULT_IDENTITY_HEADER = "emulated-identity-header-0123456789"
# The Kubernetes service account trusted by the app's federated credential (workload identity).
DEFAULT_FEDERATED_SUBJECT = "system:serviceaccount:sekoia:eventhub-trigger"


def default_fixtures_dir() -> Path:
    """Where the 118 recorded audit records live: ``$O365_FIXTURES_DIR``, else the repository's copies."""
    env = os.environ.get("O365_FIXTURES_DIR")
    return Path(env) if env else fixtures.O365_DIR


@dataclass
class EmulatorConfig:
    # --- fixed at start: server and identities
    host: str = "127.0.0.1"
    port: int = 0
    workdir: str | None = None
    tenant_id: str = DEFAULT_TENANT_ID
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    managed_identity_client_id: str = DEFAULT_MANAGED_IDENTITY_CLIENT_ID
    identity_header: str = DEFAULT_IDENTITY_HEADER
    federated_subject: str = DEFAULT_FEDERATED_SUBJECT
    tls_names: list[str] = field(default_factory=list)  # more names for the server certificate
    fixtures_dir: str | None = None
    # --- fixed at start: content
    blobs: int | None = None  # None: publish the fixture records instead of generated ones
    records_per_blob: int | None = None  # generated blobs; default 50 (5 for extra blobs in fixture mode)
    spread_hours: float = 6.0
    late_blobs: int = 0
    late_after: float = 60.0
    duplicate_rate: float = 0.0
    expired_blobs: int = 0
    vanished_blobs: int = 0
    malformed_blobs: int = 0
    oversize_records: int = 0
    oversize_kb: int = 300
    subscribed: list[str] = field(default_factory=list)  # content types already enabled at start
    seed: int = 1
    prerender_mb: int = 1024  # render all blob bodies before READY when they fit; else render on demand
    cache_mb: int = 256  # bodies rendered on demand are kept in an LRU of this size
    # --- changeable at runtime through POST /_emulator/control
    continuous: float = 0.0
    latency_ms: float = 0.0
    quota_per_minute: int = 0  # 0 = unlimited
    throttle_status: int = 403
    fault_rate: float = 0.0
    fault_kinds: list[str] = field(default_factory=lambda: ["5xx"])
    hang_seconds: float = 120.0
    token_down: str = ""
    token_lifetime: int = 3599
    page_size: int = 200
    next_page_header: str = "NextPageUri"
    strict_24h: bool = True
    disabled_by_admin: list[str] = field(default_factory=list)
    clock_offset_seconds: float = 0.0  # the API's clock minus the real one: Date headers, windows, new content
    blob_bytes_per_second: float = 0.0  # blob bodies trickle out at this rate (0: at once)
    dlp_permission: bool = True  # False: tokens are treated as lacking ActivityFeed.ReadDlp (DLP.All: AF10001)
    token_skew_seconds: float = 0.0  # tokens' iat/nbf/exp as if Entra's clock were this far ahead (+) or behind (-)
    html_answers: int = 0  # the next n listing pages and subscription lists: 200 with a gateway's HTML error page
    content_uri_host: str = ""  # the host:port named in contentUri (empty: the request's)
    next_page_host: str = ""  # the host:port named in NextPageUri (empty: the request's)

    def validate(self) -> None:
        for name in ("subscribed", "disabled_by_admin"):
            unknown = set(getattr(self, name)) - set(CONTENT_TYPES)
            if unknown:
                raise ValueError(f"{name}: unknown content types {sorted(unknown)}")
        if not set(self.fault_kinds) <= set(FAULT_KINDS) or not self.fault_kinds:
            raise ValueError(f"fault_kinds: expected a non-empty subset of {FAULT_KINDS}")
        if self.token_down not in TOKEN_DOWN_MODES:
            raise ValueError(f"token_down: expected one of {TOKEN_DOWN_MODES}")
        if self.throttle_status not in (403, 429):
            raise ValueError("throttle_status: expected 403 or 429")
        if not 0.0 <= self.fault_rate <= 1.0 or not 0.0 <= self.duplicate_rate <= 1.0:
            raise ValueError("fault_rate and duplicate_rate must be within [0, 1]")
        if self.blob_bytes_per_second < 0:
            raise ValueError("blob_bytes_per_second must be >= 0")
        if self.html_answers < 0:
            raise ValueError("html_answers must be >= 0")
        if self.page_size < 1 or self.token_lifetime < 1:
            raise ValueError("page_size and token_lifetime must be >= 1")
        if self.blobs is not None and self.blobs < 0:
            raise ValueError("blobs must be >= 0")
        if self.records_per_blob is not None and self.records_per_blob < 1:
            raise ValueError("records_per_blob must be >= 1")

    def resolved_fixtures_dir(self) -> Path:
        return Path(self.fixtures_dir) if self.fixtures_dir else default_fixtures_dir()

    def runtime_view(self) -> dict:
        return {name: getattr(self, name) for name in RUNTIME_KNOBS}


RUNTIME_KNOBS = (
    "continuous",
    "latency_ms",
    "quota_per_minute",
    "throttle_status",
    "fault_rate",
    "fault_kinds",
    "hang_seconds",
    "token_down",
    "token_lifetime",
    "page_size",
    "next_page_header",
    "strict_24h",
    "disabled_by_admin",
    "clock_offset_seconds",
    "blob_bytes_per_second",
    "dlp_permission",
    "token_skew_seconds",
    "html_answers",
    "content_uri_host",
    "next_page_host",
)


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _token_down(value) -> str:
    # JSON true/false and CLI shorthands map onto the two outage modes.
    if value is True:
        return "503"
    if value in (False, None, 0):
        return ""
    text = str(value).strip().lower()
    return {"true": "503", "1": "503", "false": "", "0": "", "off": "", "none": ""}.get(text, text)


_COERCE = {
    "continuous": float,
    "latency_ms": float,
    "quota_per_minute": int,
    "throttle_status": int,
    "fault_rate": float,
    "fault_kinds": _as_list,
    "hang_seconds": float,
    "token_down": _token_down,
    "token_lifetime": int,
    "page_size": int,
    "next_page_header": str,
    "strict_24h": _as_bool,
    "disabled_by_admin": _as_list,
    "clock_offset_seconds": float,
    "blob_bytes_per_second": float,
    "dlp_permission": _as_bool,
    "token_skew_seconds": float,
    "html_answers": int,
    "content_uri_host": str,
    "next_page_host": str,
}


def apply_runtime_changes(config: EmulatorConfig, changes: dict) -> dict:
    """Validate and apply knob changes (dashes or underscores); all-or-nothing. Returns the applied values."""
    normalised = {str(key).replace("-", "_"): value for key, value in changes.items()}
    unknown = sorted(set(normalised) - set(RUNTIME_KNOBS))
    if unknown:
        raise ValueError(f"not changeable at runtime: {unknown}; runtime knobs: {list(RUNTIME_KNOBS)}")
    candidate = dataclasses.replace(config)
    for key, value in normalised.items():
        setattr(candidate, key, _COERCE[key](value))
    candidate.validate()
    applied = {}
    for key in normalised:
        setattr(config, key, getattr(candidate, key))
        applied[key] = getattr(config, key)
    return applied


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m emulators.office365",
        description="Local HTTPS emulator of Entra ID (token endpoint) and the Office 365 Management Activity API.",
    )
    d = EmulatorConfig()
    a = p.add_argument
    a("--host", default=d.host)
    a("--port", type=int, default=d.port, help="0 picks a free port")
    a("--workdir", default=None, help="where CA/cert/key files go (default: a temp dir removed at exit)")
    a("--tenant-id", default=d.tenant_id)
    a("--client-id", default=d.client_id)
    a("--client-secret", default=d.client_secret)
    a("--fixtures-dir", default=None,
      help="directory of <ContentType>.ndjson (default: $O365_FIXTURES_DIR, else emulators/fixtures/o365)")
    g = p.add_argument_group("content (fixed at start)")
    g.add_argument("--blobs", type=int, default=None, help="generated blobs per content type (default: fixtures)")
    g.add_argument("--records-per-blob", type=int, default=None)
    g.add_argument("--spread-hours", type=float, default=d.spread_hours)
    g.add_argument("--late-blobs", type=int, default=0, help="extra blobs per content type listed only later")
    g.add_argument("--late-after", type=float, default=d.late_after, help="seconds after start")
    g.add_argument("--duplicate-rate", type=float, default=0.0)
    g.add_argument("--expired-blobs", type=int, default=0, help="extra blobs per content type answering AF20051")
    g.add_argument("--vanished-blobs", type=int, default=0, help="extra blobs per content type answering AF20050")
    g.add_argument("--malformed-blobs", type=int, default=0, help="extra blobs per content type with bad bodies")
    g.add_argument("--oversize-records", type=int, default=0, help="extra ~300 KB records per content type")
    g.add_argument("--oversize-kb", type=int, default=d.oversize_kb)
    g.add_argument("--subscribed", default="", help="content types enabled at start: comma list or 'all'")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--prerender-mb", type=int, default=d.prerender_mb, help="render bodies at start up to this size")
    g.add_argument("--cache-mb", type=int, default=d.cache_mb, help="LRU for bodies rendered on demand")
    r = p.add_argument_group("runtime knobs (also POST /_emulator/control)")
    r.add_argument("--continuous", type=float, default=0.0, help="new blobs/s per content type")
    r.add_argument("--latency-ms", type=float, default=0.0)
    r.add_argument("--quota-per-minute", type=int, default=0, help="per tenant+publisher; 0 = unlimited")
    r.add_argument("--throttle-status", type=int, choices=(403, 429), default=d.throttle_status)
    r.add_argument("--fault-rate", type=float, default=0.0)
    r.add_argument("--fault-kinds", default="5xx", help="comma list of 5xx,reset,timeout")
    r.add_argument("--hang-seconds", type=float, default=d.hang_seconds, help="duration of a 'timeout' fault")
    r.add_argument("--token-down", nargs="?", const="503", default="", choices=("503", "reset", ""))
    r.add_argument("--token-lifetime", type=int, default=d.token_lifetime)
    r.add_argument("--page-size", type=int, default=d.page_size)
    r.add_argument("--next-page-header", default=d.next_page_header, choices=("NextPageUri", "NextPageUrl"))
    r.add_argument("--strict-24h", dest="strict_24h", action="store_true", default=True)
    r.add_argument("--no-strict-24h", dest="strict_24h", action="store_false")
    r.add_argument("--disabled-by-admin", default="", help="content types whose subscription answers AF20023")
    r.add_argument("--clock-offset-seconds", type=float, default=0.0, help="the API's clock ahead (+) or behind (-)")
    r.add_argument("--blob-bytes-per-second", type=float, default=0.0, help="serve blob bodies this slowly (0: off)")
    r.add_argument("--no-dlp-permission", dest="dlp_permission", action="store_false", default=True,
                   help="act as if the app lacked ActivityFeed.ReadDlp (DLP.All answers AF10001)")
    r.add_argument("--html-answers", type=int, default=0,
                   help="the next n listing pages and subscription lists answer 200 with an HTML error page")
    r.add_argument("--content-uri-host", default="", help="host:port named in contentUri (default: the request's)")
    r.add_argument("--next-page-host", default="", help="host:port named in NextPageUri (default: the request's)")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--access-log", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    subscribed = list(CONTENT_TYPES) if args.subscribed.strip() == "all" else _as_list(args.subscribed)
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        workdir=args.workdir,
        tenant_id=args.tenant_id,
        client_id=args.client_id,
        client_secret=args.client_secret,
        fixtures_dir=args.fixtures_dir,
        blobs=args.blobs,
        records_per_blob=args.records_per_blob,
        spread_hours=args.spread_hours,
        late_blobs=args.late_blobs,
        late_after=args.late_after,
        duplicate_rate=args.duplicate_rate,
        expired_blobs=args.expired_blobs,
        vanished_blobs=args.vanished_blobs,
        malformed_blobs=args.malformed_blobs,
        oversize_records=args.oversize_records,
        oversize_kb=args.oversize_kb,
        subscribed=subscribed,
        seed=args.seed,
        prerender_mb=args.prerender_mb,
        cache_mb=args.cache_mb,
        continuous=args.continuous,
        latency_ms=args.latency_ms,
        quota_per_minute=args.quota_per_minute,
        throttle_status=args.throttle_status,
        fault_rate=args.fault_rate,
        fault_kinds=_as_list(args.fault_kinds),
        hang_seconds=args.hang_seconds,
        token_down=args.token_down,
        token_lifetime=args.token_lifetime,
        page_size=args.page_size,
        next_page_header=args.next_page_header,
        strict_24h=args.strict_24h,
        disabled_by_admin=_as_list(args.disabled_by_admin),
        clock_offset_seconds=args.clock_offset_seconds,
        blob_bytes_per_second=args.blob_bytes_per_second,
        dlp_permission=args.dlp_permission,
        html_answers=args.html_answers,
        content_uri_host=args.content_uri_host,
        next_page_host=args.next_page_host,
    )
    config.validate()
    return config
