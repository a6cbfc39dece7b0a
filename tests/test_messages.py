"""Tests for ``pushtwisted.messages``: decoding client messages and building replies."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted import messages
from pushtwisted.errors import ProtocolViolation
from pushtwisted.messages import (
    AckUpdate,
    Incoming,
    InvalidCommand,
    MessageType,
    Update,
    decode,
)

UAID = "9f3a2a6c2d3b4f0e8a1b2c3d4e5f6a7b"
CHID = "01234567-89ab-cdef-0123-456789abcdef"


def incoming(text: str) -> Incoming:
    result = decode(text)
    assert result is not None
    return result


class DecodeTests(SynchronousTestCase):
    """``decode`` turns text into an ``Incoming`` or refuses it."""

    def test_byte_order_mark(self) -> None:
        """When the text starts with a byte order mark, it is not JSON (as with json.loads)."""
        with self.assertRaises(ProtocolViolation):
            decode('\ufeff{"messageType":"hello"}')

    def test_empty(self) -> None:
        """When the text is empty, decode returns None (the message is ignored)."""
        self.assertIsNone(decode(""))

    def test_bare_ping(self) -> None:
        """When the text is ``{}`` with any JSON whitespace, decode returns a bare ping."""
        for text in ("{}", " {}", "{ }", "\n{\t\r\n }\n"):
            result = incoming(text)
            self.assertEqual(result.kind, MessageType.PING)
            self.assertIsNone(result.echo)
            self.assertTrue(messages.parse_ping(result).bare)

    def test_invalid_json(self) -> None:
        """When the text is not JSON, decode raises ProtocolViolation."""
        for text in ("{", "hello", "{'a': 1}", "  ", '{"a":NaN}', '{"a":Infinity}', "[" * 100000):
            self.assertRaises(ProtocolViolation, decode, text)

    def test_huge_float(self) -> None:
        """When a number overflows to infinity, decode raises ProtocolViolation."""
        self.assertRaises(ProtocolViolation, decode, '{"messageType":"ping","x":1e999}')

    def test_not_object(self) -> None:
        """When the JSON is not an object, decode raises ProtocolViolation."""
        for text in ("[1]", '"x"', "1", "null", "true"):
            self.assertRaises(ProtocolViolation, decode, text)

    def test_message_type_missing_or_not_string(self) -> None:
        """When messageType is missing or not a string, decode raises a closing 401."""
        for text in ('{"uaid":""}', '{"messageType":1}', '{"messageType":null}'):
            with self.assertRaises(InvalidCommand) as caught:
                decode(text)
            self.assertEqual(caught.exception.status, 401)
            self.assertEqual(caught.exception.close_code, 1002)
            self.assertEqual(caught.exception.echo, json.loads(text))

    def test_message_type_unknown(self) -> None:
        """When messageType is unknown, padded or empty, decode raises a closing 401."""
        for value in ("hi", " hello ", "", "0", "notification", "hello\u0000"):
            with self.assertRaises(InvalidCommand) as caught:
                decode(json.dumps({"messageType": value}))
            self.assertEqual(caught.exception.close_code, 1002)

    def test_message_type_case_insensitive(self) -> None:
        """When messageType and its key use any case, decode still recognises them."""
        for text, kind in (
            ('{"messageType":"HELLO"}', MessageType.HELLO),
            ('{"MESSAGETYPE":"Register"}', MessageType.REGISTER),
            ('{"messagetype":"unRegister"}', MessageType.UNREGISTER),
            ('{"MessageType":"ACK"}', MessageType.ACK),
            ('{"messageType":"Ping","extra":1}', MessageType.PING),
            ('{"messageType":"PURGE"}', MessageType.PURGE),
        ):
            self.assertEqual(incoming(text).kind, kind)

    def test_non_ascii_case_folding(self) -> None:
        """When messageType matches only by non-ASCII case folding, it is unknown."""
        self.assertRaises(InvalidCommand, decode, '{"messageType":"AC\\u212a"}')

    def test_padded_key(self) -> None:
        """When the messageType key has spaces around it, it is not the messageType key."""
        with self.assertRaises(InvalidCommand) as caught:
            decode('{" messageType ":"hello"}')
        self.assertEqual(caught.exception.close_code, 1002)


class ParseTests(SynchronousTestCase):
    """The per-command parsers check fields."""

    def test_hello_fields(self) -> None:
        """When a hello is well formed, parse_hello returns its uaid and channelIDs."""
        hello = messages.parse_hello(
            incoming(json.dumps({"messageType": "hello", "UAID": UAID, "channelids": [1, "x"]})),
            200,
        )
        self.assertEqual(hello.uaid, UAID)
        self.assertEqual(hello.channel_ids, (1, "x"))

    def test_hello_uaid_missing_or_null(self) -> None:
        """When the hello uaid is missing or null, parse_hello gives an empty uaid."""
        for text in (
            '{"messageType":"hello","channelIDs":[]}',
            '{"messageType":"hello","uaid":null,"channelIDs":[]}',
        ):
            self.assertEqual(messages.parse_hello(incoming(text), 200).uaid, "")

    def test_hello_uaid_not_a_string(self) -> None:
        """When the hello uaid is not a string, parse_hello raises a 401 that closes (1002)."""
        for uaid in (12345, 5.5, True, False, ["x"], {}, []):
            text = json.dumps({"messageType": "hello", "uaid": uaid, "channelIDs": []})
            with self.assertRaises(InvalidCommand) as caught:
                messages.parse_hello(incoming(text), 200)
            self.assertEqual(caught.exception.status, 401, uaid)
            self.assertEqual(caught.exception.close_code, 1002, uaid)

    def test_hello_bad_uaid(self) -> None:
        """When the hello uaid string is not a valid ID, parse_hello raises a 503 that
        does not close."""
        for uaid in ("0", "true", UAID[:-1], UAID + "0", "a" * 64000):
            text = json.dumps({"messageType": "hello", "uaid": uaid, "channelIDs": []})
            with self.assertRaises(InvalidCommand) as caught:
                messages.parse_hello(incoming(text), 200)
            self.assertEqual(caught.exception.status, 503)
            self.assertIsNone(caught.exception.close_code)

    def test_hello_channel_ids(self) -> None:
        """When channelIDs is missing or not a list, parse_hello raises 401."""
        for extra in ({}, {"channelIDs": None}, {"channelIDs": "x"}, {"channelIDs": {}}):
            text = json.dumps({"messageType": "hello", "uaid": "", **extra})
            with self.assertRaises(InvalidCommand) as caught:
                messages.parse_hello(incoming(text), 200)
            self.assertEqual(caught.exception.status, 401)

    def test_hello_too_many_channels(self) -> None:
        """When channelIDs is longer than the limit, parse_hello raises 503 (0 = no limit)."""
        text = json.dumps({"messageType": "hello", "uaid": "", "channelIDs": [1, 2, 3]})
        with self.assertRaises(InvalidCommand) as caught:
            messages.parse_hello(incoming(text), 2)
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(len(messages.parse_hello(incoming(text), 3).channel_ids), 3)
        self.assertEqual(len(messages.parse_hello(incoming(text), 0).channel_ids), 3)

    def test_register(self) -> None:
        """When a register carries a valid channelID, parse_register keeps its spelling."""
        text = json.dumps({"messageType": "register", "ChannelID": CHID.upper()})
        self.assertEqual(messages.parse_register(incoming(text)).channel_id, CHID.upper())

    def test_register_invalid(self) -> None:
        """When a register's channelID is missing or invalid, parse_register raises 401."""
        for extra in (
            {},
            {"channelID": ""},
            {"channelID": 1},
            {"channelID": "a" * 64},
            {"channelIDs": [CHID]},
        ):
            text = json.dumps({"messageType": "register", **extra})
            with self.assertRaises(InvalidCommand) as caught:
                messages.parse_register(incoming(text))
            self.assertEqual(caught.exception.status, 401)
            self.assertIsNone(caught.exception.close_code)

    def test_unregister(self) -> None:
        """When unregister's channelID is a string, parse_unregister returns it and its validity."""
        good = messages.parse_unregister(
            incoming(json.dumps({"messageType": "unregister", "channelID": CHID}))
        )
        bad = messages.parse_unregister(incoming('{"messageType":"unregister","channelID":"x"}'))
        self.assertTrue(good.valid)
        self.assertFalse(bad.valid)

    def test_unregister_invalid(self) -> None:
        """When an unregister's channelID is missing, empty or not a string, it is a 401."""
        for extra in ({}, {"channelID": ""}, {"channelID": 5}, {"channelID": None}):
            text = json.dumps({"messageType": "unregister", **extra})
            self.assertRaises(InvalidCommand, messages.parse_unregister, incoming(text))

    def test_ack(self) -> None:
        """When ack entries are well formed, parse_ack returns them in normal form."""
        text = json.dumps(
            {"messageType": "ack", "updates": [{"CHANNELID": CHID.upper(), "Version": 7}]}
        )
        ack = messages.parse_ack(incoming(text))
        self.assertEqual(ack.updates, (AckUpdate(chid=CHID.replace("-", ""), version=7),))
        self.assertFalse(ack.malformed)

    def test_ack_malformed_entries(self) -> None:
        """When some ack entries are malformed, parse_ack keeps the good ones and flags the rest."""
        bad_entries: list[object] = [
            {"channelID": CHID, "version": True},
            {"channelID": CHID, "version": -1},
            {"channelID": CHID, "version": "1"},
            {"channelID": CHID, "version": 1.0},
            {"channelID": CHID, "version": 2**63},
            {"channelID": "x", "version": 1},
            {"version": 1},
            "x",
            None,
        ]
        for entry in bad_entries:
            text = json.dumps(
                {"messageType": "ack", "updates": [{"channelID": CHID, "version": 1}, entry]}
            )
            ack = messages.parse_ack(incoming(text))
            self.assertTrue(ack.malformed, entry)
            self.assertEqual(len(ack.updates), 1)

    def test_ack_empty(self) -> None:
        """When updates and expired are both missing, null or empty, parse_ack raises 401."""
        for extra in ({}, {"updates": []}, {"updates": None, "expired": []}):
            text = json.dumps({"messageType": "ack", **extra})
            self.assertRaises(InvalidCommand, messages.parse_ack, incoming(text))

    def test_ack_expired_only(self) -> None:
        """When an ack has only expired entries, parse_ack accepts it with no updates."""
        ack = messages.parse_ack(incoming('{"messageType":"ack","expired":["x"]}'))
        self.assertEqual(ack.updates, ())
        self.assertFalse(ack.malformed)

    def test_ack_wrong_types(self) -> None:
        """When updates or expired is not a list, parse_ack flags the ack as malformed."""
        for text in ('{"messageType":"ack","updates":"x"}', '{"messageType":"ack","expired":5}'):
            self.assertTrue(messages.parse_ack(incoming(text)).malformed)

    def test_ping_object(self) -> None:
        """When a ping is an object, parse_ping says it is not bare."""
        self.assertFalse(messages.parse_ping(incoming('{"messageType":"ping"}')).bare)


class BuildTests(SynchronousTestCase):
    """The builders produce the exact wire JSON."""

    def test_error_reply_echo(self) -> None:
        """When building an error reply, the client object is echoed with status and error."""
        echo = {"MessageType": "REGISTER", "Status": 5, "ERROR": "x", " status ": 1, "k": [1]}
        self.assertEqual(
            json.loads(messages.error_reply(echo, 401)),
            {
                "messageType": "register",
                " status ": 1,
                "k": [1],
                "status": 401,
                "error": "Invalid Command",
            },
        )

    def test_error_reply_duplicate_message_types(self) -> None:
        """When the client sent several casings of messageType, the reply has one (the last)."""
        reply = messages.error_reply({"messageType": "a", "MESSAGETYPE": "B"}, 401)
        self.assertEqual(reply, '{"messageType":"b","status":401,"error":"Invalid Command"}')

    def test_error_reply_non_string_type(self) -> None:
        """When messageType is not a string, the reply echoes it unchanged."""
        self.assertEqual(
            json.loads(messages.error_reply({"MessageType": 3}, 401))["messageType"], 3
        )

    def test_error_reply_bare(self) -> None:
        """When there is no object to echo, the reply is just status and error."""
        self.assertEqual(
            messages.error_reply(None, 401), '{"status":401,"error":"Invalid Command"}'
        )

    def test_error_reply_too_deep(self) -> None:
        """When the echo is nested too deeply to encode, the reply drops it."""
        deep: object = []
        for _ in range(100000):
            deep = [deep]
        reply = json.loads(messages.error_reply({"messageType": "X", "d": deep}, 401))
        self.assertEqual(reply, {"messageType": "x", "status": 401, "error": "Invalid Command"})

    def test_hello_reply(self) -> None:
        """When building a hello reply, it has exactly messageType, uaid and status."""
        self.assertEqual(
            messages.hello_reply(UAID), f'{{"messageType":"hello","uaid":"{UAID}","status":200}}'
        )

    def test_register_reply(self) -> None:
        """When building a register reply, its keys come in the documented order."""
        reply = messages.register_reply(UAID, CHID, "http://e/update/t")
        self.assertEqual(
            list(json.loads(reply)), ["messageType", "uaid", "status", "channelID", "pushEndpoint"]
        )

    def test_unregister_reply(self) -> None:
        """When building an unregister reply, it has messageType, status and channelID."""
        self.assertEqual(
            messages.unregister_reply(CHID),
            f'{{"messageType":"unregister","status":200,"channelID":"{CHID}"}}',
        )

    def test_notification(self) -> None:
        """When building a notification, data appears only when non-empty."""
        text = messages.notification(
            [
                Update(channel_id="a", version=1, data="x"),
                Update(channel_id="b", version=2, data=""),
                Update(channel_id="c", version=3),
            ]
        )
        self.assertEqual(
            json.loads(text),
            {
                "messageType": "notification",
                "updates": [
                    {"channelID": "a", "version": 1, "data": "x"},
                    {"channelID": "b", "version": 2},
                    {"channelID": "c", "version": 3},
                ],
            },
        )

    def test_replies_text_exact(self) -> None:
        """When replies are built directly, each is byte for byte the compact json.dumps text."""
        odd = 'a"\\é\ud800\u2028/'

        def dumps(value: object) -> str:
            return json.dumps(value, separators=(",", ":"))

        for uaid in (UAID, odd):
            self.assertEqual(
                messages.hello_reply(uaid),
                dumps({"messageType": "hello", "uaid": uaid, "status": 200}),
            )
            self.assertEqual(
                messages.register_reply(uaid, odd, f"http://e/{odd}"),
                dumps(
                    {
                        "messageType": "register",
                        "uaid": uaid,
                        "status": 200,
                        "channelID": odd,
                        "pushEndpoint": f"http://e/{odd}",
                    }
                ),
            )
            self.assertEqual(
                messages.unregister_reply(uaid),
                dumps({"messageType": "unregister", "status": 200, "channelID": uaid}),
            )

    def test_notification_text_exact(self) -> None:
        """When built directly, a notification is byte for byte the compact json.dumps text."""
        updates = [
            Update(channel_id='a"\\é\ud800\u2028', version=2**63 - 1, data="d\u2603\n"),
            Update(channel_id=CHID, version=0, data=None),
            Update(channel_id="", version=5, data=""),
        ]
        expected = json.dumps(
            {
                "messageType": "notification",
                "updates": [
                    {"channelID": updates[0].channel_id, "version": 2**63 - 1, "data": "d\u2603\n"},
                    {"channelID": CHID, "version": 0},
                    {"channelID": "", "version": 5},
                ],
            },
            separators=(",", ":"),
        )
        text = messages.notification(updates)
        self.assertEqual(text, expected)
        text.encode("ascii")
        self.assertEqual(messages.notification([]), '{"messageType":"notification","updates":[]}')

    def test_expired_notification(self) -> None:
        """When building an expired notification, it lists the channels under expired."""
        self.assertEqual(
            messages.expired_notification(["a"]), '{"messageType":"notification","expired":["a"]}'
        )

    def test_non_ascii_escaped(self) -> None:
        """When echoed text has lone surrogates or non-ASCII, the reply stays encodable ASCII."""
        reply = messages.error_reply(incoming('{"messageType":"ping","k":"\\ud800é"}').echo, 401)
        reply.encode("ascii")
