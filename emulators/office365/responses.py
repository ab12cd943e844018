"""Response builders in the two error dialects: Management API ({"error":{code,message}}) and Entra (AADSTS)."""

from __future__ import annotations

import time
import uuid

import orjson
from aiohttp import web

from emulators.netfault import send_reset

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def json_response(payload, status: int = 200, headers: dict | None = None) -> web.Response:
    body = payload if isinstance(payload, (bytes, bytearray)) else orjson.dumps(payload)
    response = web.Response(body=body, status=status, headers=headers)
    response.headers["Content-Type"] = JSON_CONTENT_TYPE
    return response


def api_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def aad_error(request: web.Request, status: int, error: str, code: int, description: str) -> web.Response:
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    timestamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return json_response(
        {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} "
                f"Timestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status,
    )


def reset_connection(request: web.Request) -> None:
    """Abort with an RST rather than a clean FIN, like a dropped load balancer connection."""
    send_reset(request.transport)
