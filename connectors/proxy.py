"""The HTTP proxy of a locked-down network, as every client of the module meets it: which proxy a URL goes
through (``HTTPS_PROXY``, ``NO_PROXY``, or a trigger's own setting), and what a proxy that refuses said.

Each client library words a proxy's refusal its own way (requests: "ProxyError"; aiohttp: ClientHttpProxyError;
the Azure SDK wraps either), so a 403 showed as a bare "unreachable (ProxyError)" retried forever. ``refusal``
finds the proxy's answer in any of them, and ``ProxyRefusal`` says it once, naming the proxy without its
credentials: 407 and 403 are configuration errors (the proxy will not change its mind), 502 and an unreachable
proxy are retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from connectors.errors import ConfigurationError

_TUNNEL_FAILED = re.compile(r"Tunnel connection failed: (\d{3})\s*([^'\")]*)")
FATAL_STATUSES = frozenset({403, 407})


def public(proxy: str) -> str:
    """A proxy URL without its user and password: ``http://host:port``."""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def proxy_for(url: str, configured: str | None = None) -> str | None:
    """The proxy a request to ``url`` goes through: ``configured`` (a trigger's setting), else the environment's
    (``HTTPS_PROXY``/``HTTP_PROXY`` unless ``NO_PROXY`` names the host), with its credentials; None for none."""
    if configured:
        return configured
    found = session_proxy(url)  # the lookup requests and aiohttp both make (urllib's)
    if not found:
        return None
    proxy, auth = found["proxy"], found["proxy_auth"]
    if auth is not None:
        proxy = proxy.with_user(auth.login).with_password(auth.password)
    return str(proxy)


def session_proxy(url: str) -> dict:
    """An aiohttp session's proxy arguments for requests to ``url``, from the environment, looked up once (aiohttp's
    ``trust_env`` would look it up, and read ``~/.netrc``, in a thread at every request).

    The lookup ``trust_env`` makes, with the standard library's: none when ``NO_PROXY`` names the host
    (``proxy_bypass``), else the proxy of the URL's scheme (``getproxies``: ``HTTPS_PROXY`` for https), unless it is
    itself an ``https://`` proxy (aiohttp cannot use one); its credentials from its URL, else from ``~/.netrc``
    (or ``$NETRC``) for the proxy's host."""
    from urllib.request import getproxies, proxy_bypass

    from yarl import URL

    try:
        target = URL(url)
        if target.host is not None and proxy_bypass(target.host):
            return {}
        configured = getproxies().get(target.scheme) if target.scheme in ("http", "https", "ws", "wss") else None
        if not configured:
            return {}
        proxy = URL(configured)
    except ValueError:
        return {}
    if proxy.scheme in ("https", "wss"):
        return {}
    if proxy.raw_user is not None or proxy.raw_password is not None:
        credentials: tuple[str, str] | None = (proxy.user or "", proxy.password or "")
        proxy = proxy.with_user(None)
    else:
        credentials = _netrc_credentials(proxy.host)
    return {"proxy": proxy, "proxy_auth": _basic_auth(*credentials) if credentials else None}


def _netrc_credentials(host: str | None) -> tuple[str, str] | None:
    """The login and password ``~/.netrc`` (``$NETRC`` if set) has for ``host``; None without one (no file, no
    entry, a file that cannot be read or parsed)."""
    import netrc
    import os
    from pathlib import Path

    if not host:
        return None
    try:
        path = os.environ.get("NETRC")
        if path is None:
            path = str(Path.home() / ".netrc")
        found = netrc.netrc(path).authenticators(host)
    except (OSError, RuntimeError, netrc.NetrcParseError):
        return None
    if found is None:
        return None
    login, account, password = found
    return (login or account or ""), (password or "")


def _basic_auth(login: str, password: str):
    """aiohttp's credentials for a proxy (``proxy_auth``). aiohttp 3.14 deprecates ``BasicAuth`` (for 4.0) and warns at
    each one made; its own lookup made them without the warning, so none here either."""
    import warnings

    import aiohttp

    if ":" in login:  # refused by aiohttp (RFC 7617): said here, naming the setting, not as a bare ValueError
        raise ConfigurationError("HTTPS_PROXY", "the proxy's user name (from the proxy variable or ~/.netrc) may not "
                                                 "contain `:`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return aiohttp.BasicAuth(login, password)


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme in ('https', 'wss') else 80)}"


@dataclass(frozen=True)
class ProxyRefusal:
    """A proxy's answer other than "connected", or a proxy that could not be reached (``status`` 0)."""

    proxy: str  # without credentials
    target: str  # host:port asked for
    status: int
    reason: str = ""
    tunnel: bool = True  # a CONNECT refused; False: a plain-HTTP request answered by the proxy itself

    @property
    def fatal(self) -> bool:
        return self.status in FATAL_STATUSES

    def __str__(self) -> str:
        if not self.status:
            return f"the proxy {self.proxy} is unreachable ({self.reason or 'no connection'})"
        answer = f"{self.status} {self.reason}".strip()
        asked = "CONNECT" if self.tunnel else "a request for"
        return f"the proxy {self.proxy} answered {answer} to {asked} {self.target}"

    @property
    def fix(self) -> str:
        if self.status == 407:
            return ("the proxy wants credentials or refused them: give them in the proxy URL "
                    "(http://user:password@host:port, special characters percent-encoded)")
        if self.status == 403:
            return f"the proxy forbids this destination: ask its administrators to allow {self.target}"
        if self.status == 502:
            return f"the proxy could not reach {self.target}: check that the proxy may resolve and reach it"
        if not self.status:
            return "check the proxy's host and port (HTTPS_PROXY, or the trigger's proxy setting) and NO_PROXY"
        return "check the proxy's configuration"

    def message(self) -> str:
        return f"{self}: {self.fix}"

    def configuration_error(self, field: str | None = None) -> ConfigurationError:
        """Named after the setting that chose the proxy: a trigger's own, else the environment's variable."""
        return ConfigurationError(field or ("HTTPS_PROXY" if self.tunnel else "HTTP_PROXY"), self.message())


def _chain(error: BaseException):
    """The error and what it wraps: causes, contexts, urllib3's ``reason``, the Azure SDK's ``inner_exception``,
    requests' first argument."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(getattr(current, name, None) for name in ("__cause__", "__context__", "reason", "inner_exception"))
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))


def refusal(error: BaseException, url: str, configured: str | None = None,
            service_header: str | None = None) -> ProxyRefusal | None:
    """What the proxy said, when ``error`` (from a request to ``url``) comes from the proxy; else None.

    A plain-HTTP ``url`` gets the proxy's refusal as its answer: ``service_header``, a header the service puts in
    every answer (Azure Storage's ``x-ms-request-id``), tells the proxy's answer from the service's."""
    import aiohttp  # noqa: PLC0415 - every caller has it loaded already

    proxy = proxy_for(url, configured) if url else configured
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if service_header and proxy and status and url.startswith("http://"):
        headers = getattr(response, "headers", None) or {}
        if service_header not in {name.lower() for name in headers}:
            return ProxyRefusal(public(proxy), _target(url), int(status), str(getattr(response, "reason", "") or ""),
                                tunnel=False)
    for current in _chain(error):
        if isinstance(current, aiohttp.ClientHttpProxyError):
            info = getattr(current, "request_info", None)
            where = public(str(info.real_url)) if info is not None else public(proxy or "?")
            target = _target(str(info.url)) if info is not None else _target(url)
            return ProxyRefusal(where, target, current.status, str(current.message or ""))
        if isinstance(current, aiohttp.ClientProxyConnectionError):
            where = proxy or f"http://{current.host}:{current.port}"
            return ProxyRefusal(public(where), _target(url) if url else "?", 0, type(current.os_error).__name__)
        match = _TUNNEL_FAILED.search(str(current)) if isinstance(current, OSError) else None
        if match:
            return ProxyRefusal(public(proxy or "?"), _target(url) if url else "?", int(match.group(1)),
                                match.group(2).strip())
    if proxy is not None and any(type(item).__name__ == "ProxyError" for item in _chain(error)):
        # requests/urllib3 without a proxy answer: the proxy itself could not be reached.
        return ProxyRefusal(public(proxy), _target(url), 0, "connection failed")
    return None
