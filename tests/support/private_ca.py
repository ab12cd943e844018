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


def private_ca_files(directory: Path, names: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """For a server in another process: a file with the certificate for 127.0.0.1 (and ``names``) and its key
    (PEM), and the CA's."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", *names)
    cert_file, ca_file = directory / "server-cert-and-key.pem", directory / "private-ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert_file.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_file))
    return cert_file, ca_file
