"""The environment's proxy for a URL (connectors.proxy.session_proxy / proxy_for), pure logic: the lookup aiohttp's
``trust_env`` makes, done with the standard library's ``getproxies``/``proxy_bypass``."""

from __future__ import annotations

import warnings

import aiohttp
import pytest
from yarl import URL

from connectors import proxy
from connectors.errors import ConfigurationError

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                   "no_proxy", "WSS_PROXY", "wss_proxy", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # never the machine's ~/.netrc


def test_none_set():
    assert proxy.session_proxy("https://api.example.com/feed") == {}
    assert proxy.proxy_for("https://api.example.com/feed") is None
    assert proxy.proxy_for("https://api.example.com/feed", "http://configured:3128") == "http://configured:3128"


def test_https_proxy_with_credentials(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://collector:s%40cret@proxy.local:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.local:8080")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # none of aiohttp's BasicAuth warnings
        found = proxy.session_proxy("https://api.example.com/feed")
    assert found["proxy"] == URL("http://proxy.local:3128")  # the credentials taken out of the URL...
    assert isinstance(found["proxy_auth"], aiohttp.BasicAuth)
    assert (found["proxy_auth"].login, found["proxy_auth"].password) == ("collector", "s@cret")  # ...decoded
    assert proxy.proxy_for("https://api.example.com/feed") == "http://collector:s%40cret@proxy.local:3128"
    # The URL's scheme chooses the variable.
    assert proxy.session_proxy("http://api.example.com/") == {"proxy": URL("http://plain.local:8080"),
                                                             "proxy_auth": None}


def test_no_proxy_names_the_host(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.example.com")
    assert proxy.session_proxy("https://api.example.com/feed") == {}
    assert proxy.session_proxy("https://localhost:8443/") == {}
    assert proxy.session_proxy("https://other.org/")["proxy"] == URL("http://proxy.local:3128")


def test_an_https_proxy_is_not_used_and_netrc_gives_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.local:3128")  # aiohttp cannot speak TLS to a proxy
    assert proxy.session_proxy("https://api.example.com/") == {}
    netrc = tmp_path / "netrc"
    netrc.write_text("machine proxy.local login collector password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    found = proxy.session_proxy("https://api.example.com/")
    assert (found["proxy_auth"].login, found["proxy_auth"].password) == ("collector", "from-netrc")
    monkeypatch.setenv("HTTPS_PROXY", "http://url-user:url-pass@proxy.local:3128")  # the URL's win
    assert proxy.session_proxy("https://api.example.com/")["proxy_auth"].login == "url-user"


def test_a_user_name_with_a_colon_is_said(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://a%3Ab:pass@proxy.local:3128")
    with pytest.raises(ConfigurationError, match="HTTPS_PROXY"):
        proxy.session_proxy("https://api.example.com/")
