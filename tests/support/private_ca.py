"""A private certificate authority for loopback TLS servers (a TLS-inspecting proxy, a private intake)."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


def private_ca(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context whose certificate for 127.0.0.1 a new CA signed, and that CA's file (PEM) in ``directory``."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = directory / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file
