"""Tests for ``pushtwisted.webpush.messages``: WebPush client messages out and in."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted import messages
from pushtwisted.messages import InvalidCommand
from pushtwisted.webpush import messages as wp


def compact(value: object) -> str:
    """What the builders must write: compact JSON, non-ASCII escaped."""
    return json.dumps(value, separators=(",", ":"))


class BuilderTests(SynchronousTestCase):
    """The texts sent are the compact JSON of the documented objects."""

    def test_hello_reply(self) -> None:
        """The hello reply carries use_webpush true and an empty broadcasts object."""
        self.assertEqual(
            wp.hello_reply("AbC-\u00e9"),
            compact(
                {
                    "messageType": "hello",
                    "uaid": "AbC-\u00e9",
                    "status": 200,
                    "use_webpush": True,
                    "broadcasts": {},
                }
            ),
        )

    def test_register_reply(self) -> None:
        """The register reply has channelID, status and pushEndpoint, and no uaid."""
        self.assertEqual(
            wp.register_reply('c"h', "https://x/wpush/v1/t"),
            compact(
                {
                    "messageType": "register",
                    "channelID": 'c"h',
                    "status": 200,
                    "pushEndpoint": "https://x/wpush/v1/t",
                }
            ),
        )

    def test_notification_with_data(self) -> None:
        """A message with a body carries data and headers."""
        headers = {"encoding": "aesgcm", "crypto_key": "dh=BA", "encryption": "salt=x"}
        self.assertEqual(
            json.loads(wp.notification("ch", "id", "ZGF0YQ", headers)),
            {
                "messageType": "notification",
                "channelID": "ch",
                "version": "id",
                "data": "ZGF0YQ",
                "headers": headers,
            },
        )

    def test_notification_without_data(self) -> None:
        """A message without a body (None or empty) has neither data nor headers."""
        for data in (None, ""):
            self.assertEqual(
                wp.notification("ch", "id", data, {"encoding": "x"}),
                compact({"messageType": "notification", "channelID": "ch", "version": "id"}),
            )


class AckTests(SynchronousTestCase):
    """``parse_ack`` and the code labels."""

    def parse(self, value: object) -> wp.WebPushAck:
        incoming = messages.decode(json.dumps(value))
        assert incoming is not None
        return wp.parse_ack(incoming)

    def test_entries(self) -> None:
        """Each entry's version (any key case) and code label are read; channelID is not."""
        ack = self.parse(
            {
                "messageType": "ack",
                "updates": [
                    {"channelID": "x", "version": "a", "code": 101},
                    {"VERSION": "b", "Code": 7},
                    {"version": "c"},
                ],
            }
        )
        self.assertEqual(
            ack,
            wp.WebPushAck(
                (wp.AckEntry("a", "101"), wp.AckEntry("b", "other"), wp.AckEntry("c", "other")),
                False,
            ),
        )

    def test_malformed_entries(self) -> None:
        """Entries that are not objects or lack a non-empty string version are flagged."""
        ack = self.parse(
            {
                "messageType": "ack",
                "updates": [{"version": ""}, {"version": 5}, [], "v", {"version": "ok"}],
            }
        )
        self.assertEqual(ack, wp.WebPushAck((wp.AckEntry("ok", "other"),), True))

    def test_no_updates(self) -> None:
        """updates missing, null, empty or not a list: 401, the connection stays open."""
        for updates in ({}, {"updates": None}, {"updates": []}, {"updates": {"version": "a"}}):
            with self.assertRaises(InvalidCommand) as raised:
                self.parse({"messageType": "ack", **updates})
            self.assertEqual((raised.exception.status, raised.exception.close_code), (401, None))

    def test_code_labels(self) -> None:
        """Known codes are labelled by value; booleans, strings and others are ``other``."""
        self.assertEqual([wp.ack_code(c) for c in (100, 101, 102)], ["100", "101", "102"])
        self.assertEqual([wp.nack_code(c) for c in (301, 302, 303)], ["301", "302", "303"])
        for code in (None, True, "100", 100.0, 103, 300):
            self.assertEqual(wp.ack_code(code), "other")
            self.assertEqual(wp.nack_code(code), "other")
