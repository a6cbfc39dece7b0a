"""Tests for ``pushtwisted.webpush.errors``: the autopush-shaped JSON errors."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import InvalidToken, StorageBusy, StorageUnavailable, TooManyChannels
from pushtwisted.webpush.errors import (
    MORE_INFO,
    Errno,
    WebPushError,
    from_exception,
    gone,
    method_not_allowed,
    too_many_pending,
)
from pushtwisted.webpush.vapid import VapidError


class ShapeTests(SynchronousTestCase):
    """The body and headers of a ``WebPushError``."""

    def test_body_shape(self) -> None:
        """The body has exactly code, errno, error, message and more_info, as JSON."""
        error = WebPushError(400, Errno.TTL_MISSING, "Missing TTL header")
        body = json.loads(error.body())
        self.assertEqual(
            body,
            {
                "code": 400,
                "errno": 111,
                "error": "Bad Request",
                "message": "Missing TTL header",
                "more_info": MORE_INFO,
            },
        )
        self.assertEqual(body, error.to_json())
        self.assertIs(type(body["errno"]), int)
        self.assertEqual(error.response_headers(), ((b"Content-Type", b"application/json"),))

    def test_unknown_status_phrase(self) -> None:
        """A status without a standard phrase renders ``Unknown``."""
        self.assertEqual(WebPushError(599, 999, "x").to_json()["error"], "Unknown")

    def test_405(self) -> None:
        """405 has errno null and ``Allow: POST``."""
        error = method_not_allowed()
        self.assertEqual(error.status, 405)
        self.assertIn(b'"errno":null', error.body())
        self.assertEqual(json.loads(error.body())["error"], "Method Not Allowed")
        self.assertIn((b"Allow", b"POST"), error.response_headers())

    def test_410(self) -> None:
        """410 is errno 106 with ``Cache-Control: max-age=86400``."""
        error = gone()
        self.assertEqual((error.status, error.errno), (410, 106))
        self.assertIn((b"Cache-Control", b"max-age=86400"), error.response_headers())

    def test_429(self) -> None:
        """The backlog cap is 429 errno 115 with the given ``Retry-After``."""
        error = too_many_pending(retry_after=30)
        self.assertEqual((error.status, error.errno), (429, 115))
        self.assertIn((b"Retry-After", b"30"), error.response_headers())

    def test_401_vapid(self) -> None:
        """A VAPID failure is 401 errno 109 with ``WWW-Authenticate: vapid``; no reason leaks."""
        error = VapidError("signature")
        self.assertEqual(json.loads(error.body())["code"], 401)
        self.assertEqual(json.loads(error.body())["errno"], 109)
        self.assertIn((b"WWW-Authenticate", b"vapid"), error.response_headers())
        self.assertNotIn(b"signature", error.body())


class FromExceptionTests(SynchronousTestCase):
    """``from_exception`` maps shared errors to WebPush answers."""

    def test_webpush_error_unchanged(self) -> None:
        """A ``WebPushError`` is returned as it is."""
        error = gone()
        self.assertIs(from_exception(error, retry_after=5), error)

    def test_invalid_token(self) -> None:
        """``InvalidToken`` is 404 errno 102, and its detail is not used."""
        error = from_exception(InvalidToken("secret detail"), retry_after=5)
        self.assertEqual((error.status, error.errno), (404, 102))
        self.assertNotIn(b"secret", error.body())

    def test_storage(self) -> None:
        """A busy pool is 503 errno 201, another storage failure 503 errno 202, both retryable."""
        busy = from_exception(StorageBusy("queue full"), retry_after=7)
        down = from_exception(StorageUnavailable("connection refused"), retry_after=7)
        self.assertEqual((busy.status, busy.errno), (503, 201))
        self.assertEqual((down.status, down.errno), (503, 202))
        for error in (busy, down):
            self.assertIn((b"Retry-After", b"7"), error.response_headers())

    def test_anything_else(self) -> None:
        """Any other exception, including other ``PushError``s, is 500 errno 999."""
        for exc in (RuntimeError("boom"), TooManyChannels("x"), KeyError("k")):
            error = from_exception(exc, retry_after=5)
            self.assertEqual((error.status, error.errno), (500, 999))
            self.assertNotIn(b"boom", error.body())
