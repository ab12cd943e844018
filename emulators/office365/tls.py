"""Key material made at start: a throw-away CA and server certificate, the app's client certificate, the token key."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass
class ClientCertificate:
    """A certificate registered for the app: assertions signed with its key are accepted."""

    certificate: x509.Certificate
    sha1_thumbprint: bytes
    sha256_thumbprint: bytes

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> "ClientCertificate":
        return cls(
            cert, cert.fingerprint(hashes.SHA1()), cert.fingerprint(hashes.SHA256())
        )  # noqa: S303 - x5t is SHA-1


@dataclass
class TlsMaterial:
    ca_file: Path
    server_context: ssl.SSLContext
    certificate_file: Path
    private_key_file: Path
    certificate_with_key_file: Path
    client_certificate: ClientCertificate
    token_signing_key: rsa.RSAPrivateKey


def _self_signed_rsa(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    # RSA because client assertions are RS256/PS256; self-signed like a certificate uploaded to an app registration.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def create_tls_material(workdir: Path, names: tuple[str, ...] = ()) -> TlsMaterial:
    """``names``: more host names for the server certificate (e.g. login.microsoftonline.us reached through a test
    proxy)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Office 365 emulator test CA")
    server_cert = ca.issue_cert("127.0.0.1", "localhost", "::1", *names)
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)

    key, cert = _self_signed_rsa("office365-emulator-client")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    certificate_file = workdir / "client-cert.pem"
    private_key_file = workdir / "client-key.pem"
    bundle_file = workdir / "client-cert-and-key.pem"  # the single-file form azure-identity's certificate_path wants
    certificate_file.write_bytes(cert_pem)
    private_key_file.write_bytes(key_pem)
    bundle_file.write_bytes(key_pem + cert_pem)
    for path in (private_key_file, bundle_file):
        path.chmod(0o600)

    return TlsMaterial(
        ca_file=ca_file,
        server_context=context,
        certificate_file=certificate_file,
        private_key_file=private_key_file,
        certificate_with_key_file=bundle_file,
        client_certificate=ClientCertificate.from_certificate(cert),
        token_signing_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )
