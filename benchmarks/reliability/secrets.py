"""Secrets: every log line (the runtime stub's logs, the processes' output) and every metrics page of the run is
scanned for every configured secret value and key: 0 hits. Alone, it first runs two short scenarios to scan."""

from __future__ import annotations

import re

from benchmarks.reliability.context import SMOKE, Artifacts, Context
from benchmarks.reliability.verdict import finish

# A credential in a connection string or URL that was not masked.
_EMBEDDED = re.compile(rb"(?i)(SharedAccessKey|AccountKey|SharedAccessSignature|client_secret)=(?!\*\*\*)[^;&\s\"']{4,}")


def leaks(artifacts: Artifacts) -> tuple[list[str], int]:
    """Where a configured secret or an unmasked key appears in the artifacts; and the lines read."""
    secrets = sorted({secret.encode() for secret in artifacts.secrets if len(secret) >= 6}, key=len)
    hits: list[str] = []
    lines = 0
    sources = [(str(path), path.read_bytes()) for path in artifacts.files if path.exists()]
    sources += [(f"metrics page {index}", text.encode()) for index, text in enumerate(artifacts.metrics)]
    for source, data in sources:
        lines += data.count(b"\n")
        for secret in secrets:
            if secret in data:
                hits.append(f"{source}: a configured secret ({len(secret)} characters, starts {secret[:3]!r})")
        for match in _EMBEDDED.finditer(data):
            hits.append(f"{source}: {match.group(1).decode()}= followed by an unmasked value")
    return hits, lines


def scan(ctx: Context) -> dict:
    if not ctx.artifacts.metrics:  # nothing ran that delivered: give the scan something to read
        from benchmarks.reliability import faults

        smoke = Context(ctx.root / "secrets", SMOKE, ctx.quick, ctx.seed, ctx.artifacts)
        for name in ("o365_runtime_down", "eventhub_runtime_down"):
            faults.run(smoke, name)
    hits, lines = leaks(ctx.artifacts)
    failures = hits[:20]
    if not ctx.artifacts.metrics:
        failures.append("no metrics page was scraped")
    result = {"published": 0, "delivered_unique": 0, "lost": 0, "duplicates": 0, "kills": 0, "recovery_s": None,
              "hits": len(hits), "secrets": sum(len(secret) >= 6 for secret in ctx.artifacts.secrets),
              "files": len(ctx.artifacts.files),
              "metrics_pages": len(ctx.artifacts.metrics), "lines_scanned": lines}
    return finish(result, failures)
