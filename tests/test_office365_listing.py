"""Listing: windows the API accepts, timestamps, pages and their references, URLs the API hands back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from multidict import CIMultiDict

from office365.client import ApiResponse, ForeignUrl, ManagementClient, UnreadableAnswer, error_details
from office365.listing import (
    MAX_WINDOW,
    RETENTION,
    format_time,
    horizon,
    list_pages,
    next_page,
    parse_page,
    parse_time,
    windows,
)

FEED = "https://manage.office.com/api/v1.0/t/activity/feed"
PUBLISHER = "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("hours", [0.5, 23.99, 24, 24.01, 48, 7 * 24, 7 * 24 - 0.2])
def test_windows_are_contiguous_strictly_under_24h_on_whole_seconds(hours):
    start = at("2026-11-18T10:00:00.123456")
    end = start + timedelta(hours=hours)
    spans = windows(start, end)
    assert spans[0][0] == start.replace(microsecond=0)
    assert spans[-1][1] == end.replace(microsecond=0)
    for (a, b), (c, _) in zip(spans, spans[1:]):
        assert b == c
    for a, b in spans:
        assert timedelta(0) < b - a <= MAX_WINDOW < timedelta(hours=24)
        assert a.microsecond == b.microsecond == 0


def test_no_window_when_there_is_nothing_to_list():
    moment = at("2026-11-18T10:00:00")
    assert windows(moment, moment) == []
    assert windows(moment, moment - timedelta(seconds=5)) == []
    assert windows(moment, moment + timedelta(microseconds=10)) == []


def test_horizon_stays_inside_the_7_day_retention():
    now = at("2026-11-25T12:00:00.5")
    oldest = horizon(now)
    assert now - oldest < RETENTION
    assert now - oldest > RETENTION - timedelta(hours=1)


def test_times_are_sent_in_the_documented_format_in_utc():
    moment = datetime(2026, 11, 25, 11, 30, 5, 999, tzinfo=UTC)
    assert format_time(moment) == "2026-11-25T11:30:05"
    assert format_time(moment.astimezone(datetime.now().astimezone().tzinfo)) == "2026-11-25T11:30:05"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25T11:30:05.000Z",
        "2026-11-25T11:30:05Z",
        "2026-11-25T11:30:05",
        "2026-11-25T12:30:05+01:00",
        "2026-11-25T11:30:05.0000000Z",
    ],
)
def test_api_timestamps_parse_as_utc(text):
    assert parse_time(text) == at("2026-11-25T11:30:05")


def entry(content_id: str, created: str = "2026-11-25T10:00:00.000Z", **extra) -> dict:
    return {
        "contentType": "Audit.Exchange",
        "contentId": content_id,
        "contentUri": f"{FEED}/audit/{content_id}",
        "contentCreated": created,
        "contentExpiration": "2026-12-02T10:00:00.000Z",
        **extra,
    }


def test_parse_page_skips_known_blobs_and_counts_unusable_entries():
    body = orjson.dumps(
        [
            entry("a$1"),
            entry("b$2"),
            {"contentId": "c$3"},
            entry("d$4", created="not a date"),
            "junk",
            entry("e$5", contentExpiration=None),
        ]
    )
    refs, unusable = parse_page(body, "Audit.Exchange", known=lambda content_id: content_id == "b$2")
    assert [ref.content_id for ref in refs] == ["a$1", "e$5"]
    assert unusable == 3
    assert refs[0].created == at("2026-11-25T10:00:00").timestamp()
    assert refs[0].expiration == at("2026-12-02T10:00:00").timestamp()
    assert refs[1].expiration == refs[1].created + RETENTION.total_seconds()
    assert parse_page(b"", "Audit.Exchange") == ([], 0)
    with pytest.raises(ValueError):
        parse_page(b'{"error": 1}', "Audit.Exchange")


@pytest.mark.parametrize("header", ["NextPageUri", "NextPageUrl", "nextpageuri"])
def test_next_page_header_in_both_spellings(header):
    response = ApiResponse(200, CIMultiDict({header: " https://x/next "}), b"[]")
    assert next_page(response) == "https://x/next"
    assert next_page(ApiResponse(200, CIMultiDict(), b"[]")) is None


def client(rewrite: bool = False, feed: str = FEED) -> ManagementClient:
    return ManagementClient(feed, PUBLISHER, tokens=None, gate=None, rewrite_origin=rewrite,  # type: ignore[arg-type]
                            api_hosts=("https://manage.office.com",))


def test_every_url_carries_the_publisher_identifier():
    api = client()
    url = api.operation_url("subscriptions/content", contentType="DLP.All", startTime="2026-11-25T10:00:00")
    assert url.startswith(FEED + "/subscriptions/content?")
    assert "contentType=DLP.All" in url and f"PublisherIdentifier={PUBLISHER}" in url
    assert "startTime=2026-11-25T10%3A00%3A00" in url
    blob = api.given_url(f"{FEED}/audit/2026$2026$audit_exchange$Audit_Exchange$emea0036")
    assert blob == f"{FEED}/audit/2026$2026$audit_exchange$Audit_Exchange$emea0036?PublisherIdentifier={PUBLISHER}"
    page = api.given_url(f"{FEED}/subscriptions/content?contentType=X&nextPage=a%2Bb+c&publisherIdentifier=keep")
    assert page.endswith("nextPage=a%2Bb+c&publisherIdentifier=keep")  # opaque token untouched, no second one


OVERRIDE = "https://127.0.0.1:8443/api/v1.0/t/activity/feed"


def test_urls_from_the_api_follow_a_management_url_override():
    api = client(rewrite=True, feed=OVERRIDE)
    assert api.given_url("https://MANAGE.office.com:443/api/v1.0/t/activity/feed/audit/x?a=1") == (
        f"{OVERRIDE}/audit/x?a=1&PublisherIdentifier={PUBLISHER}"
    )


@pytest.mark.parametrize("rewrite", [False, True])
@pytest.mark.parametrize(
    "url",
    [
        "https://other.host/api/v1.0/t/activity/feed/audit/x",
        "https://manage.office.com.other.host/api/v1.0/t/activity/feed/audit/x",
        "http://127.0.0.1:8443/api/v1.0/t/activity/feed/audit/x",  # our host, another scheme
        "https://127.0.0.1:8444/api/v1.0/t/activity/feed/audit/x",  # our host, another port
        "https://user@other.host/api/v1.0/t/activity/feed/audit/x",
    ],
)
def test_a_url_naming_another_host_is_refused(url, rewrite):
    with pytest.raises(ForeignUrl) as refused:
        client(rewrite, feed=OVERRIDE).given_url(url)
    said = str(refused.value)
    assert refused.value.code == "foreign-host" and "user@" not in said and "/api/" not in said


def test_the_cloud_host_is_followed_without_an_override_and_rewritten_only_behind_one():
    assert client(feed=FEED).given_url(f"{FEED}/audit/x").startswith(f"{FEED}/audit/x?")
    with pytest.raises(ForeignUrl):  # an override that does not rewrite sends nothing to the cloud's host
        client(feed=OVERRIDE).given_url(f"{FEED}/audit/x")


def test_error_details_of_both_dialects():
    assert error_details(b'{"error":{"code":"AF20022","message":"No subscription"}}') == ("AF20022", "No subscription")
    assert error_details(b'{"error":"invalid_client","error_description":"AADSTS7000215: x"}') == (
        "invalid_client",
        "AADSTS7000215: x",
    )
    assert error_details(b"<html>Bad gateway</html>")[0] == ""


class FakeClient:
    """Pages of a window chained by NextPageUri, as the API serves them."""

    def __init__(self, pages: list[list[dict]], header: str = "NextPageUri"):
        self.pages = pages
        self.header = header
        self.requested: list[str] = []
        self.api = client()

    def operation_url(self, *args, **kwargs):
        return self.api.operation_url(*args, **kwargs)

    def given_url(self, url):
        return self.api.given_url(url)

    async def get(self, url: str) -> ApiResponse:
        self.requested.append(url)
        index = len(self.requested) - 1
        headers = CIMultiDict()
        if index + 1 < len(self.pages):
            headers[self.header] = f"{FEED}/subscriptions/content?contentType=Audit.Exchange&nextPage={index + 1}"
        return ApiResponse(200, headers, orjson.dumps(self.pages[index]))


@pytest.mark.parametrize("header", ["NextPageUri", "NextPageUrl"])
def test_list_pages_follows_next_page_until_absent(header):
    fake = FakeClient([[entry("a$1"), entry("a$2")], [], [entry("a$3")]], header)
    start = at("2026-11-25T00:00:00")

    async def collect():
        return [page async for page in list_pages(fake, fake.get, "Audit.Exchange", start, start + timedelta(hours=2))]

    pages = asyncio.run(collect())
    assert [[ref.content_id for ref in refs] for refs, _ in pages] == [["a$1", "a$2"], [], ["a$3"]]
    assert "startTime=2026-11-25T00%3A00%3A00" in fake.requested[0]
    assert "endTime=2026-11-25T02%3A00%3A00" in fake.requested[0]
    assert all(f"PublisherIdentifier={PUBLISHER}" in url for url in fake.requested)
    assert fake.requested[1].endswith(f"nextPage=1&PublisherIdentifier={PUBLISHER}")


@pytest.mark.parametrize("body", [b"<html><body>Service Unavailable</body></html>", b'{"value": []}', b"[{"])
def test_an_unreadable_listing_page_is_transient_trouble_not_a_crash(body):
    class Unreadable(FakeClient):
        async def get(self, url: str) -> ApiResponse:
            self.requested.append(url)
            return ApiResponse(200, CIMultiDict(), body)

    fake = Unreadable([])
    start = at("2026-11-25T00:00:00")

    async def collect():
        return [page async for page in list_pages(fake, fake.get, "Audit.Exchange", start, start + timedelta(hours=1))]

    with pytest.raises(UnreadableAnswer) as unreadable:
        asyncio.run(collect())
    assert unreadable.value.status == 200 and "listing page of Audit.Exchange" in str(unreadable.value)
