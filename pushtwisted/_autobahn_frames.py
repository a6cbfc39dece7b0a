"""Whole WebSocket messages read straight from the bytes received.

Autobahn parses every incoming frame through a chain of about fifteen
method calls (``processData``, ``onFrameBegin``, ``onMessageBegin``,
``onMessageFrameBegin``, ``onFrameData``, ``onMessageFrameData``,
``onFrameEnd``, ``onMessageFrameEnd``, ``onMessageEnd``, ...), a
``FrameHeader``, a masker and two lists per message, and copies the
remaining buffer after each step.  A push client's messages (hello,
register, ack, ping: 20-200 bytes) nearly always come as one small,
unfragmented, masked text frame, often several in one read.

``next_message`` recognises exactly that case and returns the unmasked
payload; ``pushtwisted._autobahn_tuning.LeanServerProtocol.dataReceived``
hands it to ``_onMessage`` as Autobahn's ``onMessageEnd`` would, and gives
everything else to Autobahn unchanged, from the first byte it did not take:
control frames (ping, pong, close), fragments, a frame not wholly received,
reserved bits or opcodes, unmasked frames, lengths in 64 bits or not in
their shortest encoding, and payloads over the size limit (which Autobahn
then refuses, 1009).  So every check and every close code stay Autobahn's.
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.websocket.xormasker import (  # type: ignore[attr-defined]
    create_xor_masker as _native_create_xor_masker,
)

__all__ = ["SmallXorMasker", "create_xor_masker", "frame_header", "next_message", "unmask"]

#: Payloads shorter than this are unmasked with one integer XOR; longer ones
#: by Autobahn's native masker (cheaper per byte, dearer to set up: below
#: ~1 KB its setup costs ~6 us, the XOR ~1 us).
_SMALL = 1024
_TEXT = 0x81  # FIN, RSV 0, opcode 1
_BINARY = 0x82  # FIN, RSV 0, opcode 2
_U16 = struct.Struct("!H")


def unmask(payload: bytes, mask: bytes) -> bytes:
    """Return ``payload`` XORed with the 4-byte ``mask`` repeated (RFC 6455 5.3)."""
    size = len(payload)
    if size >= _SMALL:
        result: bytes = _native_create_xor_masker(mask, size).process(payload)  # type: ignore[no-untyped-call]
        return result
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")


class SmallXorMasker:
    """Autobahn's masker interface (``pointer``/``reset``/``process``) in pure Python.

    For the frames Autobahn itself parses (``apply()`` in
    ``pushtwisted._autobahn_tuning`` makes it use ``create_xor_masker``):
    one ``int`` XOR per chunk instead of a native masker object per frame.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = mask
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        shift = self._ptr & 3
        self._ptr += len(data)
        return unmask(data, self._mask[shift:] + self._mask[:shift]) if data else b""


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """Autobahn's ``create_xor_masker``, with small frames unmasked in Python."""
    if length is not None and length < _SMALL:
        return SmallXorMasker(mask)
    return _native_create_xor_masker(mask, length)  # type: ignore[no-untyped-call]


def next_message(data: bytes, pos: int, limit: int) -> tuple[bytes, bool, int] | None:
    """Read one whole single-frame message from ``data`` at ``pos``, if it is one.

    :param limit: the largest payload accepted; 0 or less for none.
    :returns: ``(payload, is_binary, end)`` with the payload unmasked and
        ``end`` the offset after the frame, when the frame at ``pos`` is a
        final (unfragmented) text or binary frame with no reserved bit,
        masked, its length in 7 or (at least 126) in 16 bits, no longer than
        ``limit``, and all in ``data``; None for anything else.
    """
    first = data[pos : pos + 1]
    if first != b"\x81" and first != b"\x82":
        return None
    end = len(data)
    if end - pos < 6:
        return None
    second = data[pos + 1]
    if second < 0x80:  # not masked
        return None
    size = second & 0x7F
    if size < 126:
        start = pos + 6
        mask = data[pos + 2 : start]
    elif size == 126 and end - pos >= 8:
        (size,) = _U16.unpack_from(data, pos + 2)
        if size < 126:  # not the shortest encoding: Autobahn's to refuse
            return None
        start = pos + 8
        mask = data[pos + 4 : start]
    else:
        return None
    stop = start + size
    if stop > end or 0 < limit < size:
        return None
    return unmask(data[start:stop], mask), first == b"\x82", stop


def frame_header(size: int, binary: bool) -> bytes:
    """Return the header of an unmasked, final, uncompressed frame of ``size`` bytes."""
    first = _BINARY if binary else _TEXT
    if size < 126:
        return bytes((first, size))
    if size < 0x10000:
        return struct.pack("!BBH", first, 126, size)
    return struct.pack("!BBQ", first, 127, size)
