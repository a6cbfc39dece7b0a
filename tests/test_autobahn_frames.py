"""Tests for ``pushtwisted._autobahn_frames`` and the direct read of whole messages.

``next_message`` is checked on its own; the protocol with the direct read is
checked against the same protocol with it off (every frame through
Autobahn's parser) on random byte streams cut at random places.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted._autobahn_frames import frame_header, next_message, unmask
from pushtwisted.config import ClientConfig, Config
from tests.test_websocket import Connection, client_frame, server_frames, ws_config

MASK = b"\x11\x22\x33\x44"
PING = b'{"messageType":"ping"}'


def _config(**websocket: Any) -> Config:
    """``ws_config`` with pings allowed at any rate (the streams are full of them)."""
    client = ClientConfig(min_ping_interval=0, max_messages_per_second=0)
    return dataclasses.replace(ws_config(**websocket), client=client)


def _masked(payload: bytes) -> bytes:
    return bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


class NextMessageTests(SynchronousTestCase):
    """What ``next_message`` takes, and what it leaves to Autobahn."""

    def test_whole_frames(self) -> None:
        """When a final masked text or binary frame is all there, it comes back unmasked."""
        for size in (0, 1, 5, 125, 126, 1000, 1023, 1024, 4000, 65535):
            payload = os.urandom(size)
            for opcode, binary in ((1, False), (2, True)):
                frame = client_frame(payload, opcode)
                data = b"xy" + frame + b"rest"
                self.assertEqual(
                    next_message(data, 2, 0), (payload, binary, 2 + len(frame)), (size, opcode)
                )

    def test_partial_frames(self) -> None:
        """When any part of the frame is missing, nothing is taken."""
        for size in (0, 10, 200):
            frame = client_frame(b"a" * size)
            for cut in range(len(frame)):
                self.assertIsNone(next_message(frame[:cut], 0, 0), (size, cut))

    def test_left_to_autobahn(self) -> None:
        """When a frame is control, a fragment, reserved, unmasked or oddly sized, it is left."""
        long = b"a" * 200
        cases = {
            "ping": client_frame(b"x", opcode=9),
            "close": client_frame(b"\x03\xe8", opcode=8),
            "pong": client_frame(b"", opcode=10),
            "first fragment": client_frame(b"x", fin=False),
            "continuation": client_frame(b"x", opcode=0),
            "reserved opcode": client_frame(b"x", opcode=3),
            "rsv1": bytes([0xC1]) + client_frame(b"x")[1:],
            "unmasked": bytes([0x81, 1]) + b"x",
            "64-bit length": bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 200) + MASK + long,
            "16-bit length under 126": bytes([0x81, 0x80 | 126])
            + struct.pack("!H", 5)
            + MASK
            + b"x" * 5,
        }
        for name, frame in cases.items():
            self.assertIsNone(next_message(frame, 0, 0), name)

    def test_limit(self) -> None:
        """When the payload is over the limit it is left (Autobahn refuses it); 0 is no limit."""
        frame = client_frame(b"a" * 100)
        self.assertIsNone(next_message(frame, 0, 99))
        self.assertIsNotNone(next_message(frame, 0, 100))
        self.assertIsNotNone(next_message(frame, 0, 0))

    def test_unmask(self) -> None:
        """When unmasked, a payload of any size is the byte-wise XOR with the mask."""
        for size in (0, 1, 3, 4, 1023, 1024, 3000):
            data = os.urandom(size)
            self.assertEqual(unmask(_masked(data), MASK), data)

    def test_frame_header(self) -> None:
        """When a header is built, it is RFC 6455's for a final unmasked frame."""
        for size in (0, 125, 126, 65535, 65536):
            opcode, payload, fin = server_frames(frame_header(size, False) + b"a" * size)[0]
            self.assertEqual((opcode, len(payload), fin), (1, size, True))
        self.assertEqual(frame_header(3, True), b"\x82\x03")


# A piece of a client byte stream: frames the direct read takes and frames it leaves.
_PIECES = st.sampled_from(
    [
        client_frame(PING),
        client_frame(b"{}"),
        client_frame(PING, opcode=2),
        client_frame(b'{"messageType":"ping","x":"' + b"y" * 300 + b'"}'),
        client_frame(b"ab", opcode=9),  # ping: answered with a pong
        client_frame(b'{"messageType":', fin=False) + client_frame(b'"ping"}', opcode=0),
        client_frame(b"not json"),  # closes 1002
        client_frame(b"\xff\xfe"),  # invalid UTF-8: closes 1007
        client_frame(b"a" * 2000),  # over the 1,024-byte limit: 1009
        bytes([0xC1]) + client_frame(PING)[1:],  # RSV1: protocol error
        client_frame(b"\x03\xe8", opcode=8),  # close
    ]
)


def _run(direct: bool, chunks: list[bytes]) -> tuple[bytes, bool, int]:
    conn = Connection(_config(max_message_size=1024))
    conn.factory.protocol_class.directFrames = direct
    conn.handshake()
    for chunk in chunks:
        conn.protocol.dataReceived(chunk)
    return conn.take(), conn.transport.disconnecting, conn.protocol.state


class DirectReadTests(SynchronousTestCase):
    """The direct read changes nothing on the wire."""

    @settings(max_examples=300, deadline=None)
    @given(
        pieces=st.lists(_PIECES, min_size=1, max_size=8),
        cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
    )
    def test_same_as_autobahn(self, pieces: list[bytes], cuts: list[int]) -> None:
        """When any stream is received in any chunks, the server answers as Autobahn alone does."""
        stream = b"".join(pieces)
        points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        chunks = [stream[a:b] for a, b in zip(points, points[1:], strict=False)]
        self.assertEqual(_run(True, chunks), _run(False, chunks))

    def test_several_messages_in_one_read(self) -> None:
        """When several whole messages arrive in one read, each is answered, in order."""
        conn = Connection(_config())
        conn.handshake()
        conn.protocol.dataReceived(client_frame(b"{}") + client_frame(PING) + client_frame(b"{}"))
        self.assertEqual([f[1] for f in server_frames(conn.take())], [b"{}"] * 3)

    def test_message_then_partial_frame(self) -> None:
        """When a read ends inside a frame, Autobahn takes the rest; the next read completes it."""
        conn = Connection(_config())
        conn.handshake()
        second = client_frame(PING)
        conn.protocol.dataReceived(client_frame(b"{}") + second[:5])
        self.assertEqual([f[1] for f in server_frames(conn.take())], [b"{}"])
        conn.protocol.dataReceived(second[5:] + client_frame(b"{}"))
        self.assertEqual([f[1] for f in server_frames(conn.take())], [b"{}", b"{}"])
