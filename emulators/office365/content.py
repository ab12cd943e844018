"""Published content: blobs per content type, their listing order, bodies, and the ground truth of what was published.

A blob owns a contiguous range of record keys (see records.py). With --duplicate-rate, a blob also repeats,
verbatim, the selected records of the blob just before it in its content type's list (a later blob).
All state is touched from the event loop only.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import orjson

from emulators.fixtures import read_lines

from .config import CONTENT_TYPES, EmulatorConfig
from .records import RecordSource, mix64, unit_fraction
from .timefmt import content_id_stamp, format_content_time, now_ms

OK, EXPIRED, VANISHED, MALFORMED = "ok", "expired", "vanished", "malformed"
MALFORMED_KINDS = ("invalid_json", "json_object", "non_object_element", "invalid_utf8")
PARTIAL_MALFORMED = "non_object_element"  # the only malformed kind whose object records are still delivered
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
FIXTURE_BLOB_SIZE = 7  # fixture files are grouped into blobs of this many records
CONTENT_ID_SLUGS = {
    "Audit.AzureActiveDirectory": "audit_azureactivedirectory$Audit_AzureActiveDirectory",
    "Audit.Exchange": "audit_exchange$Audit_Exchange",
    "Audit.SharePoint": "audit_sharepoint$Audit_SharePoint",
    "Audit.General": "audit_general$Audit_General",
    "DLP.All": "dlp_all$DLP_All",
}


@dataclass(slots=True, eq=False)
class Blob:
    content_type: str
    content_id: str
    created_ms: int
    keys: range
    role: str  # normal | late | expired | vanished | malformed | oversize | continuous (for the manifest)
    state: str = OK
    malformed: str = ""
    visible_after: float = 0.0  # time.monotonic() before which listings leave the blob out
    previous: "Blob | None" = None  # the earlier blob whose duplicate-selected records this one repeats
    body: bytes | None = None  # rendered before READY when everything fits in --prerender-mb
    published_ms: int = 0  # API time it was published (for late blobs: when it became listable, if not later)

    @property
    def delivers_records(self) -> bool:
        return self.state == OK or (self.state == MALFORMED and self.malformed == PARTIAL_MALFORMED)


@dataclass(slots=True)
class _Spec:
    created_ms: int
    keys: range
    role: str
    state: str = OK
    malformed: str = ""
    visible_after: float = 0.0


class ContentStore:
    def __init__(self, config: EmulatorConfig, sources: dict[str, RecordSource]):
        self.config = config
        self.sources = sources
        self.blobs: dict[str, list[Blob]] = {ct: [] for ct in sources}
        self._created: dict[str, list[int]] = {ct: [] for ct in sources}
        self._by_id: dict[str, Blob] = {}
        self._dup_salt = {ct: mix64(config.seed ^ (0xD0 + i)) for i, ct in enumerate(sources)}
        self.ever_subscribed: set[str] = set()
        self.started_monotonic = time.monotonic()
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._lru_bytes = 0
        self.prerendered = False
        self._reference_ms = 0  # API time at build: blobs of the initial backlog count as published then

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: EmulatorConfig) -> "ContentStore":
        fixtures_dir = config.resolved_fixtures_dir()
        sources = {}
        for index, content_type in enumerate(CONTENT_TYPES):
            lines = read_lines(Path(fixtures_dir) / f"{content_type}.ndjson")  # names a missing or empty file
            sources[content_type] = RecordSource(content_type, index, lines, config.seed, config.oversize_kb)
        store = cls(config, sources)
        reference_ms = store._reference_ms = now_ms()
        for index, content_type in enumerate(CONTENT_TYPES):
            store._populate(content_type, index, reference_ms)
        store._prerender()
        return store

    def _prerender(self) -> None:
        # Rendering costs ~5 us per synthetic record: paying it before READY keeps blob GETs cheap in benchmarks.
        estimate = 0
        for content_type, blobs in self.blobs.items():
            source = self.sources[content_type]
            estimate += sum(source.estimated_size(len(b.keys)) for b in blobs)
            estimate += len(source.oversize_keys) * self.config.oversize_kb * 1024
        if estimate * (1 + self.config.duplicate_rate) > self.config.prerender_mb * 1024 * 1024:
            return
        for blobs in self.blobs.values():
            for blob in blobs:
                blob.body = self._render(blob)
        self.prerendered = True

    def _populate(self, content_type: str, type_index: int, reference_ms: int) -> None:
        cfg = self.config
        source = self.sources[content_type]
        rng = random.Random(cfg.seed * 1_000_003 + type_index)
        span_ms = max(1, int(cfg.spread_hours * 3600 * 1000))
        oldest_ms = reference_ms - span_ms
        extra_size = cfg.records_per_blob or (5 if cfg.blobs is None else 50)

        if cfg.blobs is None:
            n = source.fixture_count
            chunks = [range(i, min(i + FIXTURE_BLOB_SIZE, n)) for i in range(0, n, FIXTURE_BLOB_SIZE)]
        else:
            chunks = [source.allocate(cfg.records_per_blob or 50) for _ in range(cfg.blobs)]
        # Evenly spread with jitter, strictly in the past.
        specs = [
            _Spec(oldest_ms + int((i + rng.random()) * span_ms / len(chunks)), keys, "normal")
            for i, keys in enumerate(chunks)
        ]

        def extra(role: str, **kw) -> _Spec:
            return _Spec(oldest_ms + int(rng.random() * span_ms), source.allocate(extra_size), role, **kw)

        late_visible = self.started_monotonic + cfg.late_after
        for _ in range(cfg.late_blobs):
            spec = extra("late", visible_after=late_visible)
            spec.created_ms = oldest_ms + int(rng.random() * 0.75 * span_ms)  # well inside windows already read
            specs.append(spec)
        specs += [extra("expired", state=EXPIRED) for _ in range(cfg.expired_blobs)]
        specs += [extra("vanished", state=VANISHED) for _ in range(cfg.vanished_blobs)]
        specs += [
            extra("malformed", state=MALFORMED, malformed=MALFORMED_KINDS[(type_index + i) % len(MALFORMED_KINDS)])
            for i in range(cfg.malformed_blobs)
        ]
        for _ in range(cfg.oversize_records):
            spec = extra("oversize")
            source.oversize_keys.add(spec.keys[0])
            specs.append(spec)

        specs.sort(key=lambda s: s.created_ms)
        for spec in specs:
            self._append(content_type, spec)

    def _append(self, content_type: str, spec: _Spec) -> Blob:
        blobs = self.blobs[content_type]
        index = len(blobs)
        stamp = content_id_stamp(spec.created_ms, index)
        region = f"emea{(mix64(self.config.seed) + index) % 10000:04d}"
        blob = Blob(
            content_type=content_type,
            content_id=f"{stamp}${stamp}${CONTENT_ID_SLUGS[content_type]}${region}",
            created_ms=spec.created_ms,
            keys=spec.keys,
            role=spec.role,
            state=spec.state,
            malformed=spec.malformed,
            visible_after=spec.visible_after,
            previous=blobs[-1] if blobs and self.config.duplicate_rate > 0 else None,
            published_ms=max(spec.created_ms, self._reference_ms),
        )
        blobs.append(blob)
        self._created[content_type].append(spec.created_ms)
        self._by_id[blob.content_id] = blob
        return blob

    def publish_late(self, content_type: str, seconds_late: float, records: int | None = None) -> Blob:
        """A blob listable from now on whose contentCreated is ``seconds_late`` in the past: it lands in windows a
        collector may have listed already (the API's late content)."""
        now = now_ms()
        created_ms = now - int(seconds_late * 1000)
        size = records or self.config.records_per_blob or (5 if self.config.blobs is None else 50)
        created = self._created[content_type]
        blobs = self.blobs[content_type]
        stamp = content_id_stamp(created_ms, len(self._by_id))
        region = f"emea{(mix64(self.config.seed) + len(self._by_id)) % 10000:04d}"
        blob = Blob(
            content_type=content_type,
            content_id=f"{stamp}${stamp}${CONTENT_ID_SLUGS[content_type]}${region}",
            created_ms=created_ms,
            keys=self.sources[content_type].allocate(size),
            role="late",
            published_ms=now,
        )
        position = bisect.bisect_right(created, created_ms)  # listings stay sorted by contentCreated
        created.insert(position, created_ms)
        blobs.insert(position, blob)
        self._by_id[blob.content_id] = blob
        return blob

    def publish_new(self, content_type: str) -> Blob:
        """Continuous mode: a new blob created now (never before the newest one, so the list stays sorted)."""
        created = self._created[content_type]
        created_ms = max(now_ms(), created[-1] if created else 0)
        size = self.config.records_per_blob or (5 if self.config.blobs is None else 50)
        return self._append(content_type, _Spec(created_ms, self.sources[content_type].allocate(size), "continuous"))

    # ------------------------------------------------------------------ queries
    @staticmethod
    def is_visible(blob: Blob, now_monotonic: float) -> bool:
        return blob.visible_after <= now_monotonic

    def page(
        self, content_type: str, start_us: int, end_us: int, from_index: int, size: int
    ) -> tuple[list[Blob], int | None]:
        """Visible blobs with start <= contentCreated < end, from list position from_index; and the next position."""
        created = self._created[content_type]
        blobs = self.blobs[content_type]
        now = time.monotonic()
        i = max(from_index, bisect.bisect_left(created, -(-start_us // 1000)))
        stop = bisect.bisect_left(created, -(-end_us // 1000))
        out: list[Blob] = []
        while i < stop and len(out) < size:
            if blobs[i].visible_after <= now:
                out.append(blobs[i])
            i += 1
        while i < stop and blobs[i].visible_after > now:
            i += 1
        return out, (i if i < stop else None)

    def lookup(self, content_id: str) -> Blob | None:
        return self._by_id.get(content_id)

    def _is_duplicated(self, content_type: str, key: int) -> bool:
        return unit_fraction(key ^ self._dup_salt[content_type]) < self.config.duplicate_rate

    def _duplicate_keys(self, blob: Blob) -> list[int]:
        previous = blob.previous
        if previous is None:
            return []
        return [k for k in previous.keys if self._is_duplicated(blob.content_type, k)]

    def body(self, blob: Blob) -> bytes:
        if blob.body is not None:
            return blob.body
        cached = self._lru.get(blob.content_id)
        if cached is not None:
            self._lru.move_to_end(blob.content_id)
            return cached
        body = self._render(blob)
        budget = self.config.cache_mb * 1024 * 1024
        if len(body) <= budget:
            self._lru[blob.content_id] = body
            self._lru_bytes += len(body)
            while self._lru_bytes > budget:
                self._lru_bytes -= len(self._lru.popitem(last=False)[1])
        return body

    def _render(self, blob: Blob) -> bytes:
        source = self.sources[blob.content_type]
        records = [source.render(k, blob.created_ms) for k in blob.keys]
        if blob.previous is not None:
            records += [source.render(k, blob.previous.created_ms) for k in self._duplicate_keys(blob)]
        if blob.state == MALFORMED:
            return self._malformed_body(blob, records)
        return b"[" + b",".join(records) + b"]"

    @staticmethod
    def _malformed_body(blob: Blob, records: list[bytes]) -> bytes:
        if blob.malformed == "invalid_json":
            valid = b"[" + b",".join(records) + b"]"
            return valid[: len(valid) // 2]  # truncated mid-record: never parseable
        if blob.malformed == "json_object":
            return orjson.dumps({"contentId": blob.content_id, "status": "unavailable", "records": None})
        if blob.malformed == "non_object_element":
            junk = (b"null", b'"corrupted record"', b"42", b"[]")
            mixed: list[bytes] = []
            for i, record in enumerate(records):
                mixed.append(record)
                if i % 2 == 0:
                    mixed.append(junk[(i // 2) % len(junk)])
            return b"[" + b",".join(mixed) + b"]"
        # invalid_utf8: bytes that are not UTF-8 and, ignored or replaced, still leave no valid JSON.
        return b"[\xff" + b",".join(records) + b"\xfe"

    # ------------------------------------------------------------------ ground truth
    def published(self, content_types=None, include_unsubscribed: bool = False, with_ids: bool = True) -> dict:
        now = time.monotonic()
        ids: list[str] = []
        counts: dict[str, int] = {}
        for content_type in content_types or self.sources:
            if not include_unsubscribed and content_type not in self.ever_subscribed:
                counts[content_type] = 0
                continue
            available = lambda b: b is not None and b.visible_after <= now and b.delivers_records  # noqa: E731
            ranges: list[range] = []
            extra: list[int] = []
            for blob in self.blobs[content_type]:
                if not available(blob):
                    continue
                ranges.append(blob.keys)
                if blob.previous is not None and not available(blob.previous):
                    extra.extend(self._duplicate_keys(blob))  # their only available copy is this one
            counts[content_type] = sum(len(r) for r in ranges) + len(extra)
            if with_ids:
                record_id = self.sources[content_type].record_id
                ids.extend(record_id(k) for r in ranges for k in r)
                ids.extend(record_id(k) for k in extra)
        result = {"count": sum(counts.values()), "by_content_type": counts}
        if with_ids:
            result["ids"] = ids
        return result

    def manifest(self, content_type: str | None = None, with_ids: bool = False) -> list[dict]:
        now = time.monotonic()
        out = []
        for ct in [content_type] if content_type else self.blobs:
            for blob in self.blobs.get(ct, []):
                entry = {
                    "contentType": ct,
                    "contentId": blob.content_id,
                    "contentCreated": format_content_time(blob.created_ms),
                    "role": blob.role,
                    "state": blob.state,
                    "malformed": blob.malformed or None,
                    "visible": blob.visible_after <= now,
                    "records": len(blob.keys),
                    "duplicates": len(self._duplicate_keys(blob)),
                    "published": blob.published_ms / 1000,
                }
                if with_ids:
                    entry["ids"] = [self.sources[ct].record_id(key) for key in blob.keys]
                out.append(entry)
        return out

    def listing_entry(self, blob: Blob, base_url: str) -> dict:
        return {
            "contentType": blob.content_type,
            "contentId": blob.content_id,
            "contentUri": f"{base_url}/audit/{blob.content_id}",
            "contentCreated": format_content_time(blob.created_ms),
            "contentExpiration": format_content_time(blob.created_ms + SEVEN_DAYS_MS),
        }
