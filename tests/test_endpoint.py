"""Tests for ``pushtwisted.web.endpoint``: ``PUT /update/<token>`` and its listener's ``Site``."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from pushtwisted.errors import InvalidToken, StorageBusy, StorageUnavailable, TooManyChannels
from pushtwisted.logs import AccessLog, uaid_hash
from pushtwisted.storage.interface import PendingUpdate, Storage, UpdateOutcome, UpdateResult
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import (
    FailingStorage,
    FakeSession,
    HoldingStorage,
)
from pushtwisted.tokens import EndpointCrypto, generate_key
from pushtwisted.web._form import MAX_FIELDS, MAX_PART_HEADER_LINE, MAX_PART_HEADERS
from pushtwisted.web._site import ListenerSite
from pushtwisted.web._util import (
    JSONResponse,
    WebError,
    error_response,
    json_bytes,
    render_async,
)
from pushtwisted.web.endpoint import (
    IGNORED_BODY_LOG_INTERVAL,
    UpdateResource,
    build_endpoint_root,
    build_endpoint_site,
)
from pushtwisted.web.status import add_status_children
from tests._endpoint_fixture import NodeFixture

BASE = "http://push.example"
NOW = 1_700_000_000.0
MAX_VERSION = 2**63 - 1


class FixedOutcomeStorage(MemoryStorage):
    """A ``MemoryStorage`` whose ``update`` answers a fixed result."""

    def __init__(self, result: UpdateResult) -> None:
        super().__init__()
        self.result = result

    def update(
        self, uaid: str, chid: str, version: int, data: str | None, only_newer: bool = False
    ) -> Deferred[UpdateResult]:
        return succeed(self.result)


class ExplodingCrypto:
    """An ``EndpointCrypto`` stand-in whose ``parse`` fails unexpectedly."""

    def parse(self, token: str) -> tuple[str, str]:
        raise RuntimeError("secret-detail-xyzzy")


def _tamper(token: str) -> str:
    """Return ``token`` with one character in the middle changed."""
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


class EndpointTestCase(NodeFixture, SynchronousTestCase):
    """Shared fixtures: a node with one registered channel, and HTTP helpers."""

    now = NOW

    def setUp(self) -> None:
        super().setUp()
        # The client's own spelling: dashed and upper case.
        self.channel_id = str(uuid.UUID(self.chid)).upper()
        self.successResultOf(self.storage.register(self.uaid, self.chid, self.channel_id, 0))
        self.token = self.crypto.make_token(self.uaid, self.chid)

    def storage_config(self, **changes: Any) -> None:
        self.config = dataclasses.replace(
            self.config, storage=dataclasses.replace(self.config.storage, **changes)
        )

    def use_storage(self, storage: Storage) -> None:
        """Switch to ``storage`` with the same registered channel."""
        self.storage = storage
        self.successResultOf(storage.register(self.uaid, self.chid, self.channel_id, 0))

    def request(
        self, method: str, path: str | None = None, *, stub: StubTreq | None = None, **kwargs: Any
    ) -> tuple[Any, bytes]:
        """Send one request through ``StubTreq``; return the response and its body."""
        stub = stub or StubTreq(build_endpoint_root(self.node()))
        url = BASE + (path if path is not None else "/update/" + self.token)
        response = self.successResultOf(stub.request(method, url, **kwargs))
        body = self.successResultOf(response.content())
        return response, body

    def put(self, path: str | None = None, **kwargs: Any) -> tuple[Any, bytes]:
        return self.request("PUT", path, **kwargs)

    def logged_update(self) -> tuple[StubTreq, UpdateResource, list[dict[str, Any]]]:
        """A ``StubTreq`` on the endpoint root whose ``UpdateResource`` logs into a list."""
        events: list[dict[str, Any]] = []
        root = build_endpoint_root(self.node())
        update = root.getStaticEntity(b"update")
        assert isinstance(update, UpdateResource)
        update.log = Logger(observer=events.append)
        return StubTreq(root), update, events

    def pending(self) -> list[PendingUpdate]:
        return self.successResultOf(self.storage.fetch_pending(self.uaid))

    def assertJSON(self, response: Any, body: bytes, code: int, expected: object) -> None:
        self.assertEqual(response.code, code, body)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(json.loads(body), expected)

    def assertError(
        self, response: Any, body: bytes, code: int, errno: int, error: str, message: str
    ) -> None:
        self.assertJSON(
            response, body, code, {"code": code, "errno": errno, "error": error, "message": message}
        )


class UpdateTests(EndpointTestCase):
    """Storage and live delivery of a PUT."""

    def test_stored_for_offline_client(self) -> None:
        """A PUT for a client that is not connected is stored with its data and answered 202."""
        response, body = self.put(data={"version": "5", "data": "hi"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(
            self.pending(), [PendingUpdate(channel_id=self.channel_id, version=5, data="hi")]
        )

    def test_delivered_to_connected_session(self) -> None:
        """A PUT for a connected client is stored, handed to its session and answered 200."""
        session = FakeSession()
        self.registry.add(self.uaid, session)
        response, body = self.put(data={"version": "7", "data": "hello"})
        self.assertJSON(response, body, 200, {})
        self.assertEqual(session.delivered, [(self.channel_id, 7, "hello")])
        self.assertEqual(self.pending()[0].version, 7)

    def test_delivery_refused_is_202(self) -> None:
        """When the session's ``deliver`` returns False the answer is 202, still stored."""
        session = FakeSession(accept=False)
        self.registry.add(self.uaid, session)
        response, body = self.put(data={"version": "7"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(session.delivered, [(self.channel_id, 7, None)])
        self.assertEqual(self.pending()[0].version, 7)

    def test_delivery_error_is_202(self) -> None:
        """When the session's ``deliver`` raises, the error is logged and the answer is 202."""
        exploding = FakeSession()
        exploding.explode = True
        self.registry.add(self.uaid, exploding)
        response, body = self.put(data={"version": "7"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_gone_after_unregister(self) -> None:
        """A PUT to an unregistered channel is 410 errno 106 and does not revive it."""
        self.successResultOf(self.storage.unregister(self.uaid, self.chid))
        response, body = self.put(data={"version": "5"})
        self.assertError(response, body, 410, 106, "Gone", "Gone")
        self.assertEqual(self.pending(), [])

    def test_gone_for_never_registered_channel(self) -> None:
        """A valid token for a channel storage never saw is 410."""
        token = self.crypto.make_token(self.uaid, uuid.uuid4().hex)
        response, body = self.put("/update/" + token, data={"version": "5"})
        self.assertError(response, body, 410, 106, "Gone", "Gone")

    def test_gone_for_unknown_uaid(self) -> None:
        """A valid token for a UAID storage never saw is 410."""
        token = self.crypto.make_token(uuid.uuid4().hex, self.chid)
        response, body = self.put("/update/" + token, data={"version": "5"})
        self.assertError(response, body, 410, 106, "Gone", "Gone")

    def test_store_data_off_stores_none_but_delivers_data(self) -> None:
        """With ``store_data`` off, storage gets no data but the live delivery carries it."""
        self.storage_config(store_data=False)
        session = FakeSession()
        self.registry.add(self.uaid, session)
        response, body = self.put(data={"version": "5", "data": "secret"})
        self.assertJSON(response, body, 200, {})
        self.assertEqual(session.delivered, [(self.channel_id, 5, "secret")])
        self.assertEqual(
            self.pending(), [PendingUpdate(channel_id=self.channel_id, version=5, data=None)]
        )

    def test_older_version_passes_through_by_default(self) -> None:
        """Without ``monotonic_versions`` an older version replaces the stored one."""
        self.put(data={"version": "10"})
        response, body = self.put(data={"version": "1"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(self.pending()[0].version, 1)

    def test_monotonic_stale_version_is_200_without_delivery(self) -> None:
        """With ``monotonic_versions`` a version not above the stored one is 200, not delivered."""
        self.endpoint_config(monotonic_versions=True)
        self.put(data={"version": "10"})
        session = FakeSession()
        self.registry.add(self.uaid, session)
        response, body = self.put(data={"version": "10", "data": "x"})
        self.assertJSON(response, body, 200, {})
        self.assertEqual(session.delivered, [])
        self.assertEqual(self.pending()[0].version, 10)
        self.assertEqual(self.metrics.count("notifications_rejected", reason="stale"), 1)

    def test_monotonic_passes_only_newer(self) -> None:
        """With ``monotonic_versions`` a newer version is stored and delivered as usual."""
        self.endpoint_config(monotonic_versions=True)
        self.put(data={"version": "10"})
        response, body = self.put(data={"version": "11"})
        self.assertJSON(response, body, 202, {})
        self.assertEqual(self.pending()[0].version, 11)

    def test_storage_unavailable_is_503(self) -> None:
        """A ``StorageUnavailable`` from storage is 503 errno 999 with ``Retry-After: 5``."""
        self.use_storage(
            FailingStorage(MemoryStorage(), ["update"], StorageUnavailable("memcached down"))
        )
        response, body = self.put(data={"version": "5"})
        self.assertError(
            response, body, 503, 999, "Service Unavailable", "Storage unavailable, retry later"
        )
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        self.assertNotIn(b"memcached", body)

    def test_storage_busy_is_503(self) -> None:
        """A ``StorageBusy`` (full pool queue) is 503 too."""
        self.use_storage(FailingStorage(MemoryStorage(), ["update"], StorageBusy()))
        response, body = self.put(data={"version": "5"})
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])

    def test_storage_unexpected_error_is_503(self) -> None:
        """Any other storage failure, even raised synchronously, is logged and answered 503."""
        self.use_storage(
            FailingStorage(MemoryStorage(), ["update"], RuntimeError("boom"), synchronous=True)
        )
        response, body = self.put(data={"version": "5"})
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["errno"], 999)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unexpected_error_is_500_without_traceback(self) -> None:
        """An unexpected exception is logged and answered 500 JSON without its text."""
        response, body = self.request(
            "PUT", stub=StubTreq(build_endpoint_root(self.node(crypto=ExplodingCrypto())))
        )
        self.assertError(response, body, 500, 999, "Internal Server Error", "Internal server error")
        self.assertNotIn(b"Traceback", body)
        self.assertNotIn(b"xyzzy", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stored_result_without_channel_id_delivers_normal_form(self) -> None:
        """If storage returns no client spelling, the normal-form chid is delivered."""
        self.use_storage(FixedOutcomeStorage(UpdateResult(outcome=UpdateOutcome.STORED)))
        session = FakeSession()
        self.registry.add(self.uaid, session)
        response, body = self.put(data={"version": "3"})
        self.assertEqual(response.code, 200)
        self.assertEqual(session.delivered, [(self.chid, 3, None)])


class ParameterTests(EndpointTestCase):
    """Where ``version`` and ``data`` come from and how they are checked."""

    def stored_version(self) -> int:
        return self.pending()[0].version

    def test_bad_versions_are_400(self) -> None:
        """Negative, signed, fractional, non-digit or too large versions are 400 errno 301."""
        for bad in ["-1", "abc", "1.5", str(2**63), "+5", "1e3", "5 6", "0x10", "\u0663", "9" * 40]:
            response, body = self.put(data={"version": bad})
            self.assertError(response, body, 400, 301, "Bad Request", "Invalid Version")
        self.assertEqual(self.pending(), [])

    def test_largest_version_is_accepted(self) -> None:
        """2**63-1 is a valid version."""
        response, _ = self.put(data={"version": str(MAX_VERSION)})
        self.assertEqual(response.code, 202)
        self.assertEqual(self.stored_version(), MAX_VERSION)

    def test_version_whitespace_and_leading_zeros(self) -> None:
        """Surrounding whitespace is stripped and leading zeros are allowed."""
        self.put(data={"version": "  007\t"})
        self.assertEqual(self.stored_version(), 7)
        self.put(data={"version": "0"})
        self.assertEqual(self.stored_version(), 0)

    def test_missing_version_is_clock_time(self) -> None:
        """Without ``version`` the version is the clock's time in whole seconds."""
        self.clock.advance(0.75)
        response, _ = self.put()
        self.assertEqual(response.code, 202)
        self.assertEqual(self.stored_version(), int(NOW))

    def test_empty_version_is_clock_time(self) -> None:
        """An empty or blank ``version`` is the clock's time."""
        self.put(data={"version": ""})
        self.assertEqual(self.stored_version(), int(NOW))
        self.clock.advance(3)
        self.put(data={"version": "   "})
        self.assertEqual(self.stored_version(), int(NOW) + 3)

    def test_version_from_query_string(self) -> None:
        """``version`` and ``data`` are read from the query string when the body has none."""
        response, _ = self.put("/update/" + self.token + "?version=9&data=q")
        self.assertEqual(response.code, 202)
        self.assertEqual(
            self.pending()[0], PendingUpdate(channel_id=self.channel_id, version=9, data="q")
        )

    def test_bad_version_in_query_string_is_400(self) -> None:
        """A bad ``version`` in the query string is 400 too."""
        response, body = self.put("/update/" + self.token + "?version=-3")
        self.assertError(response, body, 400, 301, "Bad Request", "Invalid Version")

    def test_body_wins_over_query_string(self) -> None:
        """A body field takes precedence over the same query field."""
        self.put("/update/" + self.token + "?version=9&data=q", data={"version": "3"})
        self.assertEqual(
            self.pending()[0], PendingUpdate(channel_id=self.channel_id, version=3, data="q")
        )

    def test_form_body_without_content_type(self) -> None:
        """A body without ``Content-Type`` is parsed as a form."""
        response, _ = self.put(data=b"version=12&data=x%20y")
        self.assertEqual(response.code, 202)
        self.assertEqual(
            self.pending()[0], PendingUpdate(channel_id=self.channel_id, version=12, data="x y")
        )

    def test_form_body_with_charset_parameter(self) -> None:
        """A form ``Content-Type`` with parameters is still a form."""
        self.put(
            data=b"version=21",
            headers={"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=utf-8"},
        )
        self.assertEqual(self.stored_version(), 21)

    def test_multipart_body(self) -> None:
        """A ``multipart/form-data`` body is parsed, including UTF-8 data."""
        body = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="version"\r\n\r\n'
            b"13\r\n"
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="data"\r\n\r\n'
            b"h\xc3\xa9llo\r\n"
            b"--XyZ--\r\n"
        )
        response, _ = self.put(
            data=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
        )
        self.assertEqual(response.code, 202)
        self.assertEqual(
            self.pending()[0],
            PendingUpdate(channel_id=self.channel_id, version=13, data="h\xe9llo"),
        )

    def test_multipart_first_named_part_wins(self) -> None:
        """Unnamed parts are skipped and the first part of a repeated name wins."""
        body = (
            b"--B\r\nContent-Disposition: form-data\r\n\r\n99\r\n"
            b'--B\r\nContent-Disposition: form-data; name="version"\r\n\r\n15\r\n'
            b'--B\r\nContent-Disposition: form-data; name="version"\r\n\r\n16\r\n'
            b"--B--\r\n"
        )
        self.put(data=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
        self.assertEqual(self.stored_version(), 15)

    def test_multipart_bad_charset_is_400(self) -> None:
        """A multipart field that does not decode in its charset is 400 errno 303."""
        for charset, raw in [(b"utf-8", b"\xff"), (b"no-such-charset", b"x")]:
            body = (
                b'--B\r\nContent-Disposition: form-data; name="data"\r\n'
                b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\n" + raw + b"\r\n"
                b"--B--\r\n"
            )
            response, out = self.put(
                data=body, headers={"Content-Type": "multipart/form-data; boundary=B"}
            )
            self.assertError(response, out, 400, 303, "Bad Request", "Invalid request body")

    def test_non_utf8_query_string_is_400(self) -> None:
        """A query ``data`` that is not UTF-8 is 400 errno 303."""
        response, body = self.put("/update/" + self.token + "?data=%ff")
        self.assertError(response, body, 400, 303, "Bad Request", "Invalid request body")

    def test_malformed_multipart_is_400(self) -> None:
        """A multipart body without its boundary is 400 errno 303."""
        response, body = self.put(
            data=b"version=5", headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
        )
        self.assertError(response, body, 400, 303, "Bad Request", "Invalid request body")

    def test_other_body_types_are_not_parsed(self) -> None:
        """``text/plain`` and JSON bodies are ignored: the version is the clock's time."""
        for content_type in ["text/plain", "application/json"]:
            self.clock.advance(1)
            response, _ = self.put(data=b"version=14", headers={"Content-Type": content_type})
            self.assertEqual(response.code, 202)
            self.assertEqual(self.stored_version(), int(self.clock.seconds()))

    def test_ignored_bodies_are_counted_and_warned_per_type(self) -> None:
        """A body that is not a form is counted, and warned about at most once per type
        per minute, the line giving the count since the last one; forms and empty
        bodies are neither."""
        stub, _, events = self.logged_update()

        def put(content_type: str | None, data: bytes = b"{}") -> None:
            headers = {"Content-Type": content_type} if content_type else {}
            response, _ = self.put(stub=stub, data=data, headers=headers)
            self.assertEqual(response.code, 202)

        def warnings() -> list[tuple[str, int]]:
            return [
                (e["content_type"], e["count"]) for e in events if e["log_level"].name == "warn"
            ]

        put("text/plain")
        put("Text/Plain; charset=utf-8")
        put("application/json")
        put(None, b"version=3")
        put("text/plain", b"")
        self.assertEqual(warnings(), [("text/plain", 1), ("application/json", 1)])
        self.clock.advance(IGNORED_BODY_LOG_INTERVAL)
        put("text/plain")
        self.assertEqual(warnings()[2:], [("text/plain", 2)])
        self.assertEqual(self.metrics.count("notifications_body_ignored"), 4)
        self.assertIn("text/plain", formatEvent([e for e in events if "count" in e][0]))

    def test_ignored_body_types_remembered_are_bounded(self) -> None:
        """Past 32 distinct media types, further ones share the ``other`` line."""
        stub, _, events = self.logged_update()
        for i in range(40):
            self.put(stub=stub, data=b"x", headers={"Content-Type": f"text/x-{i}"})
        types = [e["content_type"] for e in events if "content_type" in e]
        self.assertEqual(types, [f"text/x-{i}" for i in range(32)] + ["other"])
        self.assertEqual(self.metrics.count("notifications_body_ignored"), 40)

    def test_unparsed_body_still_uses_query_string(self) -> None:
        """With a body that is not a form, the query string still gives the version."""
        self.put(
            "/update/" + self.token + "?version=44",
            data=b'{"version": 1}',
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(self.stored_version(), 44)

    def test_non_utf8_body_is_400(self) -> None:
        """A form body that is not UTF-8 (raw or percent-encoded) is 400 errno 303."""
        for raw in [b"version=5&data=\xff", b"version=5&data=%ff"]:
            response, body = self.put(data=raw)
            self.assertError(response, body, 400, 303, "Bad Request", "Invalid request body")
        self.assertEqual(self.pending(), [])

    def test_data_too_long_is_413(self) -> None:
        """``data`` over ``max_data`` bytes is 413 errno 302; exactly ``max_data`` is fine."""
        self.endpoint_config(max_data=10)
        response, body = self.put(data={"version": "1", "data": "x" * 11})
        self.assertError(
            response,
            body,
            413,
            302,
            "Request Entity Too Large",
            "Data exceeds max length of 10 bytes",
        )
        response, _ = self.put(data={"version": "2", "data": "x" * 10})
        self.assertEqual(response.code, 202)
        self.assertEqual(self.pending()[0].data, "x" * 10)

    def test_data_length_counts_utf8_bytes(self) -> None:
        """The ``data`` limit counts UTF-8 bytes, not characters."""
        self.endpoint_config(max_data=10)
        response, _ = self.put(data={"data": "\xe9" * 5})
        self.assertEqual(response.code, 202)
        response, _ = self.put(data={"data": "\xe9" * 6})
        self.assertEqual(response.code, 413)

    def test_empty_data_is_no_data(self) -> None:
        """An empty ``data`` field stores and delivers no data."""
        session = FakeSession()
        self.registry.add(self.uaid, session)
        self.put(data={"version": "4", "data": ""})
        self.assertEqual(session.delivered, [(self.channel_id, 4, None)])
        self.assertIsNone(self.pending()[0].data)

    def test_token_checked_before_parameters(self) -> None:
        """A bad token is reported before a bad version or body (method, token, parameters):
        without a valid token the body is never parsed."""
        response, _ = self.put("/update/garbage", data={"version": "x"})
        self.assertEqual(response.code, 404)
        response, _ = self.put(
            "/update/" + _tamper(self.token),
            data=b"--B\r\nno headers, no end",
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )
        self.assertEqual(response.code, 404)
        self.assertEqual(self.metrics.count("notifications_rejected", reason="invalid_token"), 2)


def _part(name: str, value: bytes, *headers: bytes) -> bytes:
    """One part of a ``multipart/form-data`` body with boundary ``B``."""
    head = b'Content-Disposition: form-data; name="' + name.encode("ascii") + b'"\r\n'
    return b"--B\r\n" + head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + value + b"\r\n"


class MultipartTests(EndpointTestCase):
    """``multipart/form-data`` bodies: parsed by a bounded parser, every malformed one 400."""

    def multipart(self, *parts: bytes, end: bytes = b"--B--\r\n") -> tuple[Any, bytes]:
        return self.put(
            data=b"".join(parts) + end,
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )

    def assertInvalidBody(self, response: Any, body: bytes) -> None:
        self.assertError(response, body, 400, 303, "Bad Request", "Invalid request body")
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unicode_escape_charset_is_400(self) -> None:
        """A part in ``charset=unicode_escape`` (a codec, not a text charset) is 400."""
        response, body = self.multipart(
            _part("version", b"7"),
            _part("data", b"\\u00e9", b"Content-Type: text/plain; charset=unicode_escape"),
        )
        self.assertInvalidBody(response, body)

    def test_unicode_escape_name_is_ignored(self) -> None:
        """A part named only RFC 2231 style in ``unicode_escape`` (once a 500 and a
        ``UnicodeEncodeError`` traceback) has no usable name: it is skipped."""
        response, _ = self.multipart(
            b"--B\r\nContent-Disposition: form-data; name*=unicode_escape''%5Cud800\r\n"
            b"Content-Type: text/plain; charset=unicode_escape\r\n\r\n\\ud800\r\n",
            _part("version", b"8"),
        )
        self.assertEqual(response.code, 202)
        self.assertEqual(self.pending()[0].version, 8)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deeply_nested_header_is_400(self) -> None:
        """A part header with 3,000 ``(`` (once a RecursionError) is 400."""
        response, body = self.multipart(
            _part("version", b"7", b"Content-Type: text/plain; x=" + b"(" * 3000)
        )
        self.assertInvalidBody(response, body)

    def test_parentheses_within_the_line_limit_are_harmless(self) -> None:
        """Comment-like parentheses in a header line under the limit are just text."""
        response, _ = self.multipart(_part("version", b"7", b"X-Note: " + b"(" * 900))
        self.assertEqual(response.code, 202)
        self.assertEqual(self.pending()[0].version, 7)

    def test_too_many_parts_is_400(self) -> None:
        """More than ``MAX_FIELDS`` parts is 400, even when ``version`` came first."""
        parts = [_part("version", b"7")] + [_part(f"x{i}", b"") for i in range(MAX_FIELDS)]
        response, body = self.multipart(*parts)
        self.assertInvalidBody(response, body)
        response, _ = self.multipart(*parts[:MAX_FIELDS])
        self.assertEqual(response.code, 202)

    def test_too_many_form_fields_is_400(self) -> None:
        """A form body with more than ``MAX_FIELDS`` fields is 400 (a form of 32,768 empty
        fields took 40 ms to parse)."""
        response, body = self.put(data=b"version=7" + b"&x" * MAX_FIELDS)
        self.assertInvalidBody(response, body)
        response, _ = self.put(data=b"version=7" + b"&x" * (MAX_FIELDS - 1))
        self.assertEqual(response.code, 202)

    def test_too_many_part_headers_is_400(self) -> None:
        """A part with more than ``MAX_PART_HEADERS`` header lines is 400."""
        extra = [b"X-H%d: v" % i for i in range(MAX_PART_HEADERS)]
        response, body = self.multipart(_part("version", b"7", *extra))
        self.assertInvalidBody(response, body)
        response, _ = self.multipart(_part("version", b"7", *extra[:-1]))
        self.assertEqual(response.code, 202)

    def test_long_part_header_is_400(self) -> None:
        """A part header line over ``MAX_PART_HEADER_LINE`` bytes is 400."""
        line = b"X-Long: " + b"a" * MAX_PART_HEADER_LINE
        response, body = self.multipart(_part("version", b"7", line))
        self.assertInvalidBody(response, body)

    def test_malformed_streams_are_400(self) -> None:
        """No closing boundary, no ``Content-Disposition``, no boundary parameter, or a
        bad transfer encoding: 400 each."""
        cases = [
            self.multipart(_part("version", b"7"), end=b""),
            self.multipart(b"--B\r\nContent-Type: text/plain\r\n\r\n7\r\n"),
            self.multipart(_part("version", b"!!!", b"Content-Transfer-Encoding: base64")),
            self.multipart(_part("version", b"7", b"Content-Transfer-Encoding: x-gzip")),
            self.put(data=b"--B--\r\n", headers={"Content-Type": "multipart/form-data"}),
        ]
        for response, body in cases:
            self.assertInvalidBody(response, body)

    def test_transfer_encodings_and_charsets(self) -> None:
        """base64 and quoted-printable parts are decoded, then read in their charset."""
        self.multipart(
            _part("version", b"MTIz", b"Content-Transfer-Encoding: base64"),
            _part(
                "data",
                b"h=E9llo",
                b"Content-Type: text/plain; charset=iso-8859-1",
                b"Content-Transfer-Encoding: quoted-printable",
            ),
        )
        self.assertEqual(
            self.pending()[0],
            PendingUpdate(channel_id=self.channel_id, version=123, data="h\xe9llo"),
        )

    def test_nested_multipart_is_opaque(self) -> None:
        """A part that is itself multipart is not descended into: it is the field's text."""
        nested = b'--C\r\nContent-Disposition: form-data; name="version"\r\n\r\n9\r\n--C--'
        self.multipart(
            _part("version", b"5"),
            _part("data", nested, b"Content-Type: multipart/mixed; boundary=C"),
        )
        self.assertEqual(self.pending()[0].version, 5)
        self.assertEqual(self.pending()[0].data, nested.decode("ascii"))


class TokenAndPathTests(EndpointTestCase):
    """Token resolution and the shape of the path."""

    def test_garbage_token_is_404(self) -> None:
        """A token that does not decode is 404 errno 102."""
        response, body = self.put("/update/not-a-token", data={"version": "5"})
        self.assertError(response, body, 404, 102, "Not Found", "Invalid Token")

    def test_tampered_token_is_404(self) -> None:
        """A token with one character changed does not authenticate: 404."""
        response, body = self.put("/update/" + _tamper(self.token), data={"version": "5"})
        self.assertError(response, body, 404, 102, "Not Found", "Invalid Token")
        self.assertEqual(self.pending(), [])

    def test_token_from_other_key_is_404(self) -> None:
        """A token issued with a key this node does not hold is 404."""
        other = EndpointCrypto([generate_key()]).make_token(self.uaid, self.chid)
        response, _ = self.put("/update/" + other)
        self.assertEqual(response.code, 404)

    def test_extra_path_segment_is_404(self) -> None:
        """``/update/<token>/extra`` and ``/update/<token>/`` are 404."""
        for suffix in ["/extra", "/"]:
            response, body = self.put("/update/" + self.token + suffix, data={"version": "5"})
            self.assertError(response, body, 404, 102, "Not Found", "Invalid Token")
        self.assertEqual(self.pending(), [])

    def test_empty_token_is_404(self) -> None:
        """``/update/`` and ``/update`` are 404."""
        for path in ["/update/", "/update"]:
            response, body = self.put(path)
            self.assertError(response, body, 404, 102, "Not Found", "Invalid Token")

    def test_unknown_path_is_json_404(self) -> None:
        """Paths the endpoint listener does not serve are a JSON 404."""
        for path in ["/", "/nothing", "/push/abc"]:
            response, body = self.request("GET", path)
            self.assertError(response, body, 404, 102, "Not Found", "Not Found")


class MethodAndCORSTests(EndpointTestCase):
    """Methods other than PUT, and the CORS headers."""

    def test_other_methods_are_405_json(self) -> None:
        """GET, POST and DELETE are 405 with a JSON body and ``Allow: PUT, OPTIONS``."""
        for method in ["GET", "POST", "DELETE", "PATCH"]:
            response, body = self.request(method, data=b"version=5")
            self.assertError(response, body, 405, 304, "Method Not Allowed", "Method Not Allowed")
            self.assertEqual(response.headers.getRawHeaders("allow"), ["PUT, OPTIONS"])
        self.assertEqual(self.pending(), [])

    def test_options_is_200_empty(self) -> None:
        """OPTIONS (CORS preflight) is 200 with an empty body and the ``Allow`` header."""
        response, body = self.request("OPTIONS")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(response.headers.getRawHeaders("allow"), ["PUT, OPTIONS"])

    def test_cors_headers_when_enabled(self) -> None:
        """With ``cors`` on, every answer carries the ``Access-Control-Allow-*`` headers."""
        self.endpoint_config(cors=True)
        for method, path in [
            ("PUT", None),
            ("OPTIONS", None),
            ("GET", None),
            ("PUT", "/update/bad"),
            ("GET", "/elsewhere"),
        ]:
            response, _ = self.request(method, path)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders("access-control-allow-origin"), ["*"], path)
            self.assertEqual(
                headers.getRawHeaders("access-control-allow-methods"), ["PUT, OPTIONS"]
            )
            self.assertEqual(
                headers.getRawHeaders("access-control-allow-headers"), ["content-type"]
            )

    def test_no_cors_headers_by_default(self) -> None:
        """With ``cors`` off (the default) no CORS header is sent."""
        for method in ["PUT", "OPTIONS"]:
            response, _ = self.request(method)
            self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))
            self.assertIsNone(response.headers.getRawHeaders("access-control-allow-methods"))


class ObservabilityTests(EndpointTestCase):
    """Metrics and the per-request log line."""

    def test_metrics_for_delivered_update(self) -> None:
        """A delivered update counts received, stored, delivered, and the 200 request latency."""
        storage = HoldingStorage(MemoryStorage(self.clock), ["update"])
        self.use_storage(storage)
        self.registry.add(self.uaid, FakeSession())
        stub = StubTreq(build_endpoint_root(self.node()))
        d = stub.put(BASE + "/update/" + self.token, data={"version": "1"})
        self.assertNoResult(d)
        self.clock.advance(0.25)
        storage.next().release()
        stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        m = self.metrics
        self.assertEqual(m.count("notifications_received"), 1)
        self.assertEqual(m.count("notifications_stored"), 1)
        # The session that writes to the socket counts deliveries, not the endpoint.
        self.assertEqual(m.count("notifications_delivered"), 0)
        self.assertEqual(m.count("endpoint_requests", status="200"), 1)
        self.assertEqual(m.observations("endpoint_latency_seconds"), [(0.25, {"status": "200"})])

    def test_metrics_for_rejections(self) -> None:
        """Rejected PUTs count ``notifications_rejected`` with a reason and their status."""
        self.put(data={"version": "-1"})
        self.put("/update/" + _tamper(self.token))
        self.request("GET")
        m = self.metrics
        self.assertEqual(m.count("notifications_rejected", reason="invalid_version"), 1)
        self.assertEqual(m.count("notifications_rejected", reason="invalid_token"), 1)
        self.assertEqual(m.count("endpoint_requests", status="400"), 1)
        self.assertEqual(m.count("endpoint_requests", status="404"), 1)
        self.assertEqual(m.count("endpoint_requests", status="405"), 1)
        self.assertEqual(m.count("notifications_stored"), 0)

    def test_one_log_line_without_raw_ids(self) -> None:
        """Each request logs one info line with method, status and uaid_hash, never the raw IDs."""
        stub, update, events = self.logged_update()
        update.access_log = AccessLog(UpdateResource.access_log.namespace, events.append)
        self.clock.advance(0.25)  # the node's clock: no time passes during the request
        self.request("PUT", stub=stub, data={"version": "5"})
        lines = [e for e in events if e.get("status") is not None]
        self.assertEqual(len(lines), 1)
        line = lines[0]
        self.assertEqual(line["log_level"].name, "info")
        self.assertEqual(line["log_namespace"], "pushtwisted.web.endpoint.UpdateResource")
        self.assertEqual(
            (line["method"], line["status"], line["uaid_hash"], line["latency"]),
            ("PUT", 202, uaid_hash(self.uaid), 0.0),
        )
        self.assertEqual(formatEvent(line), f"PUT /update/ 202 in 0.0s {uaid_hash(self.uaid)}")
        text = repr(events)
        for secret in [self.uaid, self.token, self.chid]:
            self.assertNotIn(secret, text)

    def test_each_uaid_keeps_its_hash(self) -> None:
        """Repeated PUTs for two UAIDs, interleaved: every line has its own UAID's hash."""
        stub, update, events = self.logged_update()
        update.access_log = AccessLog(UpdateResource.access_log.namespace, events.append)
        other = uuid.uuid4().hex
        self.successResultOf(self.storage.register(other, self.chid, self.chid, 0))
        tokens = [self.token, self.crypto.make_token(other, self.chid)]
        for version in range(1, 5):
            path = "/update/" + tokens[version % 2]
            self.request("PUT", path, stub=stub, data={"version": str(version)})
        hashes = [e["uaid_hash"] for e in events if e.get("status") == 202]
        self.assertEqual(hashes, [uaid_hash(other), uaid_hash(self.uaid)] * 2)


class DisconnectTests(EndpointTestCase):
    """A client that goes away while storage is running."""

    def test_storage_write_completes_after_disconnect(self) -> None:
        """A started storage write is not cancelled and nothing is written to the lost request."""
        storage = HoldingStorage(MemoryStorage(self.clock), ["update"])
        self.use_storage(storage)
        session = FakeSession()
        self.registry.add(self.uaid, session)
        request = DummyRequest([self.token.encode("ascii")])
        request.method = b"PUT"
        request.content = io.BytesIO(b"version=8&data=d")
        self.assertEqual(UpdateResource(self.node()).render(request), NOT_DONE_YET)
        self.assertEqual(len(storage.pending), 1)
        request.processingFailed(Failure(ConnectionLost()))
        write = storage.next()
        write.release()
        self.assertFalse(write.cancelled)
        self.assertEqual(request.written, [])
        self.assertEqual(request.finished, 0)
        self.assertEqual(self.pending()[0].version, 8)
        self.assertEqual(session.delivered, [(self.channel_id, 8, "d")])

    def test_response_written_when_peer_stays(self) -> None:
        """With the peer still there, the answer is written once storage finishes."""
        storage = HoldingStorage(MemoryStorage(self.clock), ["update"])
        self.use_storage(storage)
        request = DummyRequest([self.token.encode("ascii")])
        request.method = b"PUT"
        request.content = io.BytesIO(b"version=8")
        UpdateResource(self.node()).render(request)
        self.assertEqual(request.finished, 0)
        storage.next().release()
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 202)
        self.assertEqual(b"".join(request.written), b"{}")


class EndpointSiteTests(EndpointTestCase):
    """The endpoint listener's ``Site``: request bodies over ``max_body`` are refused early."""

    MAX_BODY = 64

    def site(self, cors: bool = False) -> ListenerSite:
        """The endpoint listener's ``Site`` with ``endpoint.max_body`` = ``MAX_BODY``."""
        self.endpoint_config(max_body=self.MAX_BODY, cors=cors)
        return build_endpoint_site(self.node())

    def connect(self, site: ListenerSite) -> tuple[Any, StringTransport]:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def head(self, *lines: str) -> bytes:
        start = f"PUT /update/{self.token} HTTP/1.1\r\nHost: push.example\r\n"
        return (start + "".join(line + "\r\n" for line in lines) + "\r\n").encode("ascii")

    def assert413(self, transport: StringTransport) -> dict[str, Any]:
        raw = transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), raw)
        self.assertEqual(raw.count(b"HTTP/1.1"), 1, raw)
        self.assertTrue(transport.disconnecting)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIn(b"Connection: close", head)
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    def test_declared_length_over_limit_is_413_before_body(self) -> None:
        """A ``Content-Length`` over ``max_body`` gets 413 and a close from the headers alone."""
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head(f"Content-Length: {self.MAX_BODY + 1}"))
        body = self.assert413(transport)
        self.assertEqual(
            body,
            {
                "code": 413,
                "errno": 302,
                "error": "Request Entity Too Large",
                "message": f"Request body exceeds max length of {self.MAX_BODY} bytes",
            },
        )
        self.assertEqual(self.pending(), [])

    def test_declared_length_over_limit_on_a_webpush_route(self) -> None:
        """Under ``/wpush/`` the early 413 is WebPush's: errno 104, with ``more_info``."""
        protocol, transport = self.connect(self.site())
        head = self.head(f"Content-Length: {self.MAX_BODY + 1}")
        protocol.dataReceived(
            head.replace(f"PUT /update/{self.token}".encode(), b"POST /wpush/v1/x")
        )
        body = self.assert413(transport)
        self.assertEqual(body["code"], 413)
        self.assertEqual(body["errno"], 104)
        self.assertIn("more_info", body)
        self.assertEqual(self.pending(), [])

    def test_oversize_with_expect_continue_sends_no_100(self) -> None:
        """An oversize request with ``Expect: 100-continue`` gets only the 413."""
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head("Content-Length: 100000", "Expect: 100-continue"))
        self.assert413(transport)
        self.assertNotIn(b"100 Continue", transport.value())

    def test_body_after_refusal_is_ignored(self) -> None:
        """Body bytes arriving after the 413 are dropped and never rendered."""
        protocol, transport = self.connect(self.site())
        data = b"version=5&data=" + b"x" * 200
        protocol.dataReceived(self.head(f"Content-Length: {len(data)}") + data)
        protocol.dataReceived(data)
        self.assert413(transport)
        self.assertEqual(self.pending(), [])

    def test_chunked_over_limit_is_413(self) -> None:
        """A chunked body is answered 413 once it passes ``max_body``."""
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head("Transfer-Encoding: chunked"))
        chunk = b"version=5&data=" + b"x" * 40
        protocol.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assert413(transport)
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.pending(), [])

    def test_body_within_limit_is_processed(self) -> None:
        """A body within ``max_body`` (exactly at it, too) is rendered normally."""
        protocol, transport = self.connect(self.site())
        data = b"version=5&data=" + b"y" * (self.MAX_BODY - 15)
        self.assertEqual(len(data), self.MAX_BODY)
        protocol.dataReceived(self.head(f"Content-Length: {len(data)}") + data)
        raw = transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 202 "), raw)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(raw.endswith(b"\r\n\r\n{}"), raw)
        self.assertEqual(self.pending()[0].data, "y" * (self.MAX_BODY - 15))

    def test_chunked_within_limit_is_processed(self) -> None:
        """A chunked body within ``max_body`` is rendered normally."""
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head("Transfer-Encoding: chunked"))
        protocol.dataReceived(b"9\r\nversion=7\r\n0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 202 "), transport.value())
        self.assertEqual(self.pending()[0].version, 7)

    def test_early_413_cors_and_metrics(self) -> None:
        """The early 413 carries CORS headers when asked and is counted."""
        protocol, transport = self.connect(self.site(cors=True))
        protocol.dataReceived(self.head("Content-Length: 1000"))
        self.assert413(transport)
        self.assertIn(b"Access-Control-Allow-Origin: *", transport.value())
        self.assertEqual(self.metrics.count("notifications_rejected", reason="body_too_large"), 1)
        self.assertEqual(self.metrics.count("endpoint_requests", status="413"), 1)

    def logged_site(self) -> tuple[ListenerSite, io.StringIO]:
        site = self.site()
        site.startFactory()
        self.addCleanup(site.stopFactory)
        buffer = io.StringIO()
        site.logFile = buffer
        add_status_children(site.resource, self.node())
        return site, buffer

    def test_access_log_omits_update_paths(self) -> None:
        """The Site's access log never holds an ``/update/`` line (``UpdateResource``
        writes those) nor a token, whatever the spelling of the path."""
        site, buffer = self.logged_site()
        protocol, transport = self.connect(site)
        protocol.dataReceived(self.head("Content-Length: 9") + b"version=5")
        for target in [f"//update/{self.token}", f"/Update/{self.token}", "/elsewhere"]:
            protocol.dataReceived(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        log = buffer.getvalue()
        self.assertNotIn(self.token, log)
        self.assertEqual(len(log.splitlines()), 3)
        self.assertIn('"GET //update/<token> HTTP/1.1" 404', log)
        self.assertIn('"GET /Update/<token> HTTP/1.1" 404', log)
        self.assertIn("/elsewhere", log)

    def test_health_checks_in_the_access_log_by_default(self) -> None:
        """``/status`` and ``/health`` get access lines unless ``access_log_health`` is off."""
        for health, expected in [(True, 2), (False, 0)]:
            self.config = dataclasses.replace(
                self.config,
                server=dataclasses.replace(self.config.server, access_log_health=health),
            )
            site, buffer = self.logged_site()
            protocol, transport = self.connect(site)
            for target in ["/status", "/health/"]:
                protocol.dataReceived(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            protocol.dataReceived(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            log = buffer.getvalue()
            self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)
            self.assertEqual(
                len([line for line in log.splitlines() if "/other" not in line]), expected
            )
            self.assertIn("/other", log)

    def assert408(self, transport: StringTransport) -> None:
        raw = transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 408 Request Time-out\r\n"), raw)
        self.assertEqual(raw.count(b"HTTP/1.1"), 1, raw)
        self.assertTrue(transport.disconnecting)
        body = json.loads(raw.partition(b"\r\n\r\n")[2])
        self.assertEqual((body["code"], body["errno"]), (408, 999))

    def test_trickled_head_is_408_at_the_deadline(self) -> None:
        """A client sending one header line now and then (each resetting the idle
        timer) gets 408 and a close ``request_timeout`` seconds after its first byte."""
        self.assertEqual(self.config.endpoint.request_timeout, 10.0)
        site = self.site()
        protocol, transport = self.connect(site)
        protocol.dataReceived(f"PUT /update/{self.token} HTTP/1.1\r\n".encode("ascii"))
        self.clock.advance(5)
        protocol.dataReceived(b"Host: push.example\r\n")
        self.clock.advance(4.9)
        protocol.dataReceived(b"X-Slow: 1\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assert408(transport)
        self.assertEqual(self.metrics.count("endpoint_requests", status="408"), 1)
        self.assertEqual(self.pending(), [])

    def test_trickled_body_is_408(self) -> None:
        """The deadline covers the body too."""
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head("Content-Length: 9") + b"vers")
        self.clock.advance(10)
        self.assert408(transport)
        protocol.dataReceived(b"ion=5")
        self.assertEqual(self.pending(), [])

    def test_request_in_several_reads_within_the_deadline(self) -> None:
        """A request completed before the deadline is answered, and the deadline is
        over: the keep-alive connection then stays open past it."""
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head("Content-Length: 9") + b"vers")
        self.clock.advance(9)
        protocol.dataReceived(b"ion=5")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 202 "), transport.value())
        self.clock.advance(59)  # the listener's idle timeout is 60 s
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(b" 408 ", transport.value())
        [idle] = self.clock.getDelayedCalls()
        self.assertEqual(idle.getTime() - self.clock.seconds(), 1)

    def test_idle_keep_alive_uses_the_idle_timeout(self) -> None:
        """Between requests only the listener's idle timeout applies (no 408)."""
        site = self.site()
        site.timeOut = 30
        protocol, transport = self.connect(site)
        protocol.dataReceived(self.head("Content-Length: 9") + b"version=5")
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b" 408 ", transport.value())

    def test_slow_answer_outlives_the_idle_timeout(self) -> None:
        """A request still being answered when the idle timeout passes is not cut off;
        the idle time then counts from the answer."""
        storage = HoldingStorage(MemoryStorage(self.clock), ["update"])
        self.use_storage(storage)
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(self.head("Content-Length: 9") + b"version=5")
        self.clock.advance(90)  # storage answers after the 60 s idle timeout
        self.assertFalse(transport.disconnecting)
        storage.next().release()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 202 "), transport.value())
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_request_timeout_zero_is_no_limit(self) -> None:
        """``request_timeout = 0`` turns the deadline off: a line every 25 s keeps the
        request going (as it did before the deadline existed)."""
        self.endpoint_config(request_timeout=0.0)
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(f"PUT /update/{self.token} HTTP/1.1\r\n".encode("ascii"))
        for n in range(40):
            self.clock.advance(25)
            protocol.dataReceived(b"X-Slow-%d: 1\r\n" % n)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_build_endpoint_site_uses_config(self) -> None:
        """``build_endpoint_site`` applies ``endpoint.max_body`` and serves ``/update/``."""
        self.endpoint_config(max_body=32)
        site = build_endpoint_site(self.node())
        self.assertIsInstance(site, ListenerSite)
        self.assertEqual(site.max_body, 32)
        protocol, transport = self.connect(site)
        protocol.dataReceived(self.head("Content-Length: 33"))
        self.assert413(transport)


class UtilTests(SynchronousTestCase):
    """``pushtwisted.web._util``: the error shape and the async render edge."""

    def render(self, coro: Any) -> DummyRequest:
        request = DummyRequest([])
        self.assertEqual(render_async(request, coro), NOT_DONE_YET)
        return request

    def test_error_response_mapping(self) -> None:
        """Known errors map to their status, errno and public message, never their text."""
        cases = [
            (InvalidToken("detail-1"), 404, 102, "Invalid Token"),
            (StorageBusy("detail-2"), 503, 999, "Storage unavailable, retry later"),
            (TooManyChannels("detail-3"), 413, 108, "Request Entity Too Large"),
            (KeyError("detail-4"), 500, 999, "Internal server error"),
        ]
        for error, code, errno, message in cases:
            response = error_response(error)
            self.assertEqual((response.code, response.body["errno"]), (code, errno))
            self.assertEqual(response.body["message"], message)
            self.assertNotIn("detail", json_bytes(response.body).decode("ascii"))

    def test_render_async_writes_result(self) -> None:
        """The coroutine's ``JSONResponse`` is written with its code, headers and JSON body."""

        async def answer() -> JSONResponse:
            return JSONResponse(code=201, body={"a": 1}, headers=((b"X-Test", b"yes"),))

        request = self.render(answer())
        self.assertEqual(request.responseCode, 201)
        self.assertEqual(b"".join(request.written), b'{"a":1}')
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-test"), [b"yes"])
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(request.finished, 1)

    def test_render_async_push_error(self) -> None:
        """A ``WebError`` raised by the coroutine is its JSON answer, without logging."""

        async def reject() -> JSONResponse:
            raise WebError(409, 7, "Nope", headers=((b"X-Why", b"because"),))

        request = self.render(reject())
        self.assertEqual(request.responseCode, 409)
        self.assertEqual(
            json.loads(b"".join(request.written)),
            {"code": 409, "errno": 7, "error": "Conflict", "message": "Nope"},
        )
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-why"), [b"because"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_render_async_answers_at_once_when_nothing_waits(self) -> None:
        """A coroutine that awaits only fired Deferreds is answered before ``render_async``
        returns."""

        async def answer() -> JSONResponse:
            return JSONResponse(code=202, body=await succeed({}))

        request = self.render(answer())
        self.assertEqual((request.finished, request.responseCode), (1, 202))
        self.assertEqual(b"".join(request.written), b"{}")

    def test_render_async_error_after_waiting(self) -> None:
        """An error raised after a real wait is answered when it happens: a ``PushError``
        as its JSON answer, anything else 500 with the traceback logged."""
        waits: list[Deferred[None]] = []

        async def later(error: Exception) -> JSONResponse:
            waiting: Deferred[None] = Deferred()
            waits.append(waiting)
            await waiting
            raise error

        rejected = self.render(later(WebError(410, 106, "Gone")))
        crashed = self.render(later(ZeroDivisionError("secret-xyzzy")))
        self.assertEqual((rejected.finished, crashed.finished), (0, 0))
        for waiting in waits:
            waiting.callback(None)
        self.assertEqual((rejected.responseCode, crashed.responseCode), (410, 500))
        self.assertEqual(json.loads(b"".join(rejected.written))["errno"], 106)
        self.assertNotIn(b"xyzzy", b"".join(crashed.written))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_render_async_unexpected_error(self) -> None:
        """Any other exception is logged with its traceback and answered 500 without its text."""

        async def crash() -> JSONResponse:
            raise ZeroDivisionError("secret-xyzzy")

        request = self.render(crash())
        self.assertEqual(request.responseCode, 500)
        self.assertNotIn(b"xyzzy", b"".join(request.written))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
