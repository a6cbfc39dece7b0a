"""Wire formats, pure and I/O free: WebSocket frames, the HTTP upgrade, HTTP/1.1 responses.

Everything here is small on purpose: the load generator calls it for every
message of every simulated device, so it avoids per-byte Python loops (masking
is one big-integer XOR) and copies as little as it can.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "FrameError",
    "mask_payload",
    "encode_frame",
    "encode_close",
    "FrameDecoder",
    "make_ws_key",
    "ws_accept",
    "upgrade_request",
    "parse_upgrade_response",
    "put_request",
    "post_request",
    "HttpError",
    "HttpResponseParser",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_FRAME = 16 * 1024 * 1024
_getrandbits = random.getrandbits
_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


class FrameError(ValueError):
    """The peer sent bytes that are not a valid WebSocket frame stream."""


def mask_payload(key: bytes, data: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking is its own inverse)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    mask: bool = True,
    fin: bool = True,
    key: bytes | None = None,
) -> bytes:
    """One frame; client frames are masked (with a random key unless ``key`` is given)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        header = bytes((b0, mbit | n))
    elif n < 65536:
        header = _pack_short(b0, mbit | 126, n)
    else:
        header = _pack_long(b0, mbit | 127, n)
    if not mask:
        return header + payload
    if key is None:
        key = _getrandbits(32).to_bytes(4, "little")
    return header + key + mask_payload(key, payload)


def encode_close(code: int = 1000, reason: str = "", *, mask: bool = True) -> bytes:
    """A close frame with a status code."""
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode(), mask=mask)


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes)`` returns complete ``(opcode, payload)`` pairs.

    Fragmented data messages are reassembled (the pair carries the first
    frame's opcode); control frames are returned as they come, also between
    fragments.  Masked frames (which a server must not send) are unmasked anyway.
    """

    __slots__ = ("_buf", "_frag_op", "_frags")

    def __init__(self) -> None:
        self._buf = b""
        self._frag_op = -1
        self._frags: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hl = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
                if n > _MAX_FRAME:
                    raise FrameError(f"frame of {n} bytes")
            if b0 & 0x70:
                raise FrameError("reserved bits set")
            key = b""
            if b1 & 0x80:
                if end - pos < hl + 4:
                    break
                key = buf[pos + hl : pos + hl + 4]
                hl += 4
            if end - pos < hl + n:
                break
            payload = buf[pos + hl : pos + hl + n]
            if key:
                payload = mask_payload(key, payload)
            pos += hl + n
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op >= 0x8:
                if not fin or n > 125:
                    raise FrameError("bad control frame")
                out.append((op, payload))
            elif op == OP_CONT:
                if self._frag_op < 0:
                    raise FrameError("continuation without a start")
                self._frags.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frags)))
                    self._frag_op = -1
                    self._frags = []
            else:
                if self._frag_op >= 0:
                    raise FrameError("new message inside a fragmented one")
                if fin:
                    out.append((op, payload))
                else:
                    self._frag_op = op
                    self._frags = [payload]
        self._buf = buf[pos:] if pos < end else b""
        return out


def make_ws_key() -> bytes:
    """A random ``Sec-WebSocket-Key``."""
    return base64.b64encode(_getrandbits(128).to_bytes(16, "little"))


def ws_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def upgrade_request(host: str, path: str, key: bytes, protocol: str | None = None) -> bytes:
    """The HTTP/1.1 GET that asks for a WebSocket (``host`` is ``ip:port``)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_upgrade_response(head: bytes, key: bytes) -> tuple[int, str | None]:
    """Check the response head (up to, excluding, the blank line).

    Returns ``(status, error)``: ``error`` is None for a valid 101 that accepts
    ``key``, else a short failure kind.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return 0, "ws_bad_response"
    try:
        status = int(parts[1])
    except ValueError:
        return 0, "ws_bad_response"
    if status != 101:
        return status, f"ws_status_{status}"
    accept = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            accept = value.strip()
    if accept != ws_accept(key):
        return status, "ws_bad_accept"
    return status, None


def put_request(host: str, path: str, body: bytes) -> bytes:
    """A keep-alive HTTP/1.1 PUT with a form-encoded body."""
    return (
        f"PUT {path} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def post_request(
    host: str, path: str, body: bytes, *, ttl: int = 60, encoding: str = "aes128gcm"
) -> bytes:
    """A keep-alive HTTP/1.1 POST of a WebPush message (``TTL``, ``Content-Encoding``)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: {ttl}\r\n"
        f"Content-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class HttpError(ValueError):
    """The server's bytes are not a valid HTTP/1.1 response stream."""


class HttpResponseParser:
    """Incremental HTTP/1.x response parser for a keep-alive connection.

    ``feed(bytes)`` returns complete ``(status, body, keep_alive)`` triples.
    Handles Content-Length and chunked bodies; a response with neither is
    finished by ``eof()``.
    """

    __slots__ = ("_buf", "_status", "_keep", "_length", "_chunked", "_body", "_until_eof")

    def __init__(self) -> None:
        self._buf = b""
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._keep = True
        self._length = -1
        self._chunked = False
        self._body: list[bytes] = []
        self._until_eof = False

    def feed(self, data: bytes) -> list[tuple[int, bytes, bool]]:
        self._buf += data
        out: list[tuple[int, bytes, bool]] = []
        while True:
            if self._status == 0:
                idx = self._buf.find(b"\r\n\r\n")
                if idx < 0:
                    if len(self._buf) > 65536:
                        raise HttpError("response head too long")
                    return out
                head = self._buf[:idx]
                self._buf = self._buf[idx + 4 :]
                self._parse_head(head)
                if self._until_eof:
                    continue
            if self._until_eof:
                self._body.append(self._buf)
                self._buf = b""
                return out
            if self._chunked:
                done = self._parse_chunks()
                if not done:
                    return out
            else:
                if len(self._buf) < self._length:
                    return out
                self._body.append(self._buf[: self._length])
                self._buf = self._buf[self._length :]
            out.append((self._status, b"".join(self._body), self._keep))
            self._reset()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {lines[0][:80]!r}")
        try:
            self._status = int(parts[1])
        except ValueError:
            raise HttpError(f"bad status line {lines[0][:80]!r}") from None
        self._keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                self._chunked = True
            elif name == b"connection":
                if b"close" in value:
                    self._keep = False
                elif b"keep-alive" in value:
                    self._keep = True
        if self._chunked:
            self._length = -1
        elif self._length < 0:
            if self._status in (204, 304) or 100 <= self._status < 200:
                self._length = 0
            else:
                self._until_eof = True
                self._keep = False

    def _parse_chunks(self) -> bool:
        while True:
            idx = self._buf.find(b"\r\n")
            if idx < 0:
                return False
            size_text = self._buf[:idx].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                # Trailers (usually none) end with an empty line.
                end = self._buf.find(b"\r\n\r\n", idx)
                if end < 0:
                    if self._buf[idx + 2 : idx + 4] == b"\r\n":
                        end = idx
                    else:
                        return False
                self._buf = self._buf[end + 4 :]
                return True
            if len(self._buf) < idx + 2 + size + 2:
                return False
            self._body.append(self._buf[idx + 2 : idx + 2 + size])
            self._buf = self._buf[idx + 2 + size + 2 :]

    def eof(self) -> tuple[int, bytes, bool] | None:
        """The connection closed: finish a read-until-close body, if one is open."""
        if self._status and self._until_eof:
            self._body.append(self._buf)
            result = (self._status, b"".join(self._body), False)
            self._buf = b""
            self._reset()
            return result
        return None
