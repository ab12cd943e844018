"""Subscription state per content type (one tenant)."""

from __future__ import annotations

from dataclasses import dataclass

from .content import ContentStore

NONE, ENABLED, DISABLED, ADMIN_DISABLED = "none", "enabled", "disabled", "admin_disabled"


@dataclass
class Subscription:
    content_type: str
    status: str = ENABLED  # enabled | disabled | admin_disabled
    webhook: dict | None = None

    def as_json(self) -> dict:
        status = "enabled" if self.status == ENABLED else "disabled"
        webhook = {**self.webhook, "status": status} if self.webhook else None
        return {"contentType": self.content_type, "status": status, "webhook": webhook}


class SubscriptionBook:
    def __init__(self, store: ContentStore):
        self._store = store
        self._subs: dict[str, Subscription] = {}

    def state(self, content_type: str) -> str:
        sub = self._subs.get(content_type)
        return sub.status if sub else NONE

    def start(self, content_type: str, webhook: dict | None) -> Subscription | None:
        """Enable; None when it already was, with the same webhook (the API's AF20024)."""
        sub = self._subs.get(content_type)
        if sub and sub.status == ENABLED and sub.webhook == webhook:
            return None
        sub = self._subs[content_type] = Subscription(content_type, ENABLED, webhook)
        # Backlog semantics: everything published so far becomes listable once a subscription exists.
        self._store.ever_subscribed.add(content_type)
        return sub

    def stop(self, content_type: str) -> bool:
        sub = self._subs.get(content_type)
        if sub is None:
            return False
        sub.status = DISABLED
        return True

    def disable_by_admin(self, content_type: str) -> None:
        sub = self._subs.setdefault(content_type, Subscription(content_type))
        sub.status = ADMIN_DISABLED

    def listing(self) -> list[dict]:
        return [sub.as_json() for sub in self._subs.values()]
