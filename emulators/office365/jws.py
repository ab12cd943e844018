"""Just enough compact JWS (RS256 / PS256) to sign access tokens and check client assertions."""

from __future__ import annotations

import base64

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class JwsError(ValueError):
    pass


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise JwsError(f"bad base64url: {exc}") from exc


def sign_rs256(claims: dict, key: rsa.RSAPrivateKey, headers: dict | None = None) -> str:
    header = {"typ": "JWT", "alg": "RS256", **(headers or {})}
    signing_input = f"{b64url_encode(orjson.dumps(header))}.{b64url_encode(orjson.dumps(claims))}".encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode('ascii')}.{b64url_encode(signature)}"


def parse(token: str) -> tuple[dict, dict, bytes, bytes]:
    """Split a compact JWS: (header, claims, signing input, signature), without verifying it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError("not a compact JWS (expected 3 dot-separated parts)")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
        claims = orjson.loads(b64url_decode(parts[1]))
    except orjson.JSONDecodeError as exc:
        raise JwsError(f"header or payload is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwsError("header and payload must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2])


def verify(public_key: rsa.RSAPublicKey, alg: str, signing_input: bytes, signature: bytes) -> None:
    if alg == "RS256":
        pad = padding.PKCS1v15()
    elif alg == "PS256":
        # RFC 7518 fixes the salt at the hash length; AUTO also accepts signers that used the maximum.
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    else:
        raise JwsError(f"unsupported alg {alg!r} (expected RS256 or PS256)")
    try:
        public_key.verify(signature, signing_input, pad, hashes.SHA256())
    except InvalidSignature as exc:
        raise JwsError("signature does not verify with the registered certificate") from exc


def rsa_public_jwk(key: rsa.RSAPublicKey, kid: str) -> dict:
    numbers = key.public_numbers()

    def _int(value: int) -> str:
        return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": _int(numbers.n), "e": _int(numbers.e)}
