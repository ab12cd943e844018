"""Test-harness endpoints under /_emulator (no auth, no latency, no faults)."""

from __future__ import annotations

import orjson
from aiohttp import web

from .config import EmulatorConfig, apply_runtime_changes
from .content import ContentStore
from .responses import json_response
from .stats import Stats
from .subscriptions import SubscriptionBook


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
        """Apply knob changes; `reset_stats: true` is an action rather than a knob."""
        changes = dict(changes)
        reset = bool(changes.pop("reset_stats", False))
        applied = apply_runtime_changes(self.config, changes)
        for content_type in applied.get("disabled_by_admin", []):
            self.subscriptions.disable_by_admin(content_type)
        if reset:
            self.stats.reset()
            applied["reset_stats"] = True
        return applied

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
        return json_response(self.store.manifest(request.query.get("contentType") or None))

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
