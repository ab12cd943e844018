"""$cbs put-token and $management READ: request in, (status, description, body) out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .auth import check_token
from .messages import Request

if TYPE_CHECKING:
    from .broker import Broker
    from .connection import AmqpConnection

_LOG = logging.getLogger(__name__)

EVENTHUB_TYPE = "com.microsoft:eventhub"
PARTITION_TYPE = "com.microsoft:partition"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def put_token(conn: AmqpConnection, request: Request) -> tuple[int, str, Any]:
    app = request.application_properties
    operation = _text(app.get("operation"))
    if operation != "put-token":
        return 400, f"Unsupported $cbs operation {operation!r}.", None
    result = check_token(request.body, _text(app.get("type")), conn.broker.keys, conn.server.entra)
    if result.status == 202:
        if conn.has_grant():
            conn.broker.stats.tokens_renewed += 1
        conn.grant(result.audience_path or "", result.expires_at, result.claims)
        conn.broker.stats.tokens_accepted += 1
    else:
        conn.broker.stats.tokens_refused += 1
        _LOG.info("put-token refused for %s: %s", app.get("name"), result.description)
    return result.status, result.description, None


def read(conn: AmqpConnection, request: Request) -> tuple[int, str, Any]:
    broker: Broker = conn.broker
    broker.stats.management_requests += 1
    app = request.application_properties
    token = app.get("security_token")
    if token is not None:
        check = check_token(token, None, broker.keys, conn.server.entra)
        if check.status != 202:
            return 401, check.description, None
        if not check.claims & {"Listen", "Manage"}:
            return 401, conn.missing_claim("Listen", _text(app.get("name")) or ""), None
    elif not conn.has_grant():
        return 401, "Unauthorized: no valid token was put on this connection.", None
    operation = _text(app.get("operation"))
    if operation != "READ":
        return 400, f"The operation {operation!r} is not supported.", None
    name = _text(app.get("name")) or ""
    hub = broker.hub(name)
    if hub is None:
        return 404, f"The messaging entity '{name}' could not be found.", None
    kind = _text(app.get("type"))
    if kind == EVENTHUB_TYPE:
        return 200, "OK", hub.properties()
    if kind == PARTITION_TYPE:
        partition_id = _text(app.get("partition")) or ""
        partition = hub.partition(partition_id)
        if partition is None:
            return (
                400,
                f"ArgumentOutOfRange: the partition '{partition_id}' does not exist in '{hub.name}' "
                f"(partition ids 0..{len(hub.partitions) - 1}).",
                None,
            )
        return 200, "OK", partition.properties()
    return 400, f"The management type {kind!r} is not supported.", None
