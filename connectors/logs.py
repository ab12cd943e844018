"""Log helpers: secret values never reach a log line, whoever writes it (our code, the SDK or a client library)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
# Credentials embedded in connection strings and URLs are secrets of their own.
_EMBEDDED = re.compile(r"(?i)(SharedAccessKey|AccountKey|SharedAccessSignature|sig|client_secret)=([^;&\s\"']+)")
_MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


class Redactor:
    """Replaces every known secret value (and key=value credentials of connection strings) by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: set[str] = set()
        self._pattern: re.Pattern | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        for secret in secrets:
            if not secret or len(secret) < _MIN_SECRET_LENGTH:
                continue
            self._secrets.add(secret)
            for _, value in _EMBEDDED.findall(secret):
                if len(value) >= _MIN_SECRET_LENGTH:
                    self._secrets.add(value)
            # A PEM key is logged line by line by some libraries: each base64 line is secret too.
            if "-----BEGIN" in secret:
                self._secrets.update(line for line in secret.splitlines() if len(line) > 16 and "-----" not in line)
        if self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(secret) for secret in ordered))

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return _EMBEDDED.sub(lambda m: f"{m.group(1)}={MASK}", text)


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redactor(message)
        if redacted != message or record.exc_info:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redactor(record.exc_text)
            record.msg, record.args = redacted, None
        return True


def install_redaction(redactor: Redactor) -> None:
    """Filter every handler of the root logger (where the SDK's and the client libraries' records end up)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))


def describe(**fields: object) -> str:
    """``key=value`` pairs for a log line, in the order given: one line a machine and a person can both read."""
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
