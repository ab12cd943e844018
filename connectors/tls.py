"""Which certificate authorities to trust, for every TLS client of the module (Office 365, delivery to the
runtime, the Event Hubs client): the standard variables first (proxies, private CAs, the emulator), else certifi's
bundle."""

from __future__ import annotations

import os
import ssl

import certifi

_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


def ca_bundle() -> str:
    for name in _VARIABLES:
        value = os.environ.get(name)
        if value and os.path.exists(value):
            return value
    return certifi.where()


def ssl_context() -> ssl.SSLContext:
    """Verification always on; only the trusted authorities change."""
    return ssl.create_default_context(cafile=ca_bundle())
