"""Test-harness endpoints under /_emulator (no auth, no latency, no faults)."""

from __future__ import annotations

import orjson
from aiohttp import web

from .config import EmulatorConfig, apply_runtime_changes
from .content import ContentStore
from .responses import json_response
from .stats import Stats
from .subscriptions import SubscriptionBook
from .timefmt import set_clock_offset


class ControlApi:
    def __init__(self, config: EmulatorConfig, store: ContentStore, subscriptions: SubscriptionBook, stats: Stats):
        self.config = config
        self.store = store
        self.subscriptions = subscriptions
        self.stats = stats

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_emulator/health", self.health),
            web.get("/_emulator/stats", self.get_stats),
            web.get("/_emulator/published", self.published),
            web.get("/_emulator/blobs", self.blobs),
            web.get("/_emulator/control", self.get_control),
            web.post("/_emulator/control", self.post_control),
        ]

    def apply(self, changes: dict) -> dict:
        """Apply knob changes; `reset_stats: true` and `publish_late: {...}` are actions rather than knobs."""
        changes = dict(changes)
        reset = bool(changes.pop("reset_stats", False))
        late = changes.pop("publish_late", None)
        if late is not None:
            late = self._check_late(late)
        applied = apply_runtime_changes(self.config, changes)
        for content_type in applied.get("disabled_by_admin", []):
            self.subscriptions.disable_by_admin(content_type)
        if "clock_offset_seconds" in applied:
            set_clock_offset(self.config.clock_offset_seconds)
        if reset:
            self.stats.reset()
            applied["reset_stats"] = True
        if late is not None:
            types, seconds_late, count, records = late
            applied["publish_late"] = [
                self.store.publish_late(content_type, seconds_late, records).content_id
                for content_type in types
                for _ in range(count)
            ]
        return applied

    def _check_late(self, late) -> tuple[list[str], float, int, int | None]:
        """``{"seconds_late": s, "count": n, "content_types": [...], "records": m}``: n blobs per content type,
        created ``s`` seconds ago, listable from now on."""
        if not isinstance(late, dict) or not isinstance(late.get("seconds_late"), (int, float)):
            raise ValueError("publish_late: expected {\"seconds_late\": seconds, \"count\": n, \"content_types\": [...]}")
        types = late.get("content_types") or list(self.store.sources)
        unknown = set(types) - set(self.store.sources)
        if unknown:
            raise ValueError(f"publish_late: unknown content types {sorted(unknown)}")
        if not 0 <= late["seconds_late"] < 7 * 86400:
            raise ValueError("publish_late: seconds_late must be within the 7-day retention")
        return list(types), float(late["seconds_late"]), int(late.get("count", 1)), late.get("records")

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def get_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats.snapshot())

    async def published(self, request: web.Request) -> web.Response:
        """Ground truth. ?contentType=A,B filters, ?all=1 ignores subscriptions, ?ids=0 returns counts only."""
        query = request.query
        types = [t for t in query.get("contentType", "").split(",") if t] or None
        if types and not set(types) <= set(self.store.sources):
            return json_response({"error": f"unknown content types {types}"}, 400)
        result = self.store.published(
            types,
            include_unsubscribed=query.get("all", "0") in ("1", "true"),
            with_ids=query.get("ids", "1") not in ("0", "false"),
        )
        return json_response(result)

    async def blobs(self, request: web.Request) -> web.Response:
        with_ids = request.query.get("ids", "0") in ("1", "true")
        return json_response(self.store.manifest(request.query.get("contentType") or None, with_ids))

    async def get_control(self, request: web.Request) -> web.Response:
        return json_response(self.config.runtime_view())

    async def post_control(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            applied = self.apply(changes)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"applied": applied, "config": self.config.runtime_view()})
