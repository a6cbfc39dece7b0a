"""VAPID (RFC 8292 and its drafts): the header forms, the key and the ES256 JWT checks.

Section 6.10 of the WebPush reference decides.  Two header forms carry the JWT
and the application server's public key:

- ``Authorization: vapid t=<JWT>, k=<key>`` (RFC 8292), parameters separated
  by ``,``, spaces around them ignored, unknown ones ignored;
- ``Authorization: WebPush <JWT>`` (draft 01) or ``Bearer <JWT>`` (older), with
  the key in ``Crypto-Key: p256ecdsa=<key>``, possibly next to ``dh=`` and
  separated by ``;`` or ``,``.

The scheme is case-insensitive.  The key is the 65-octet uncompressed P-256
point, base64url with or without padding, or standard base64 when ``+`` or
``/`` appear.  PyJWT checks the JWS (ES256 only, raw ``r||s`` signature); the
claims are then checked here against the ``now`` passed in (no wall clock).

Every failure raises ``VapidError``: 401 errno 109 with ``WWW-Authenticate:
vapid``, labelled by a ``reason`` for the ``vapid failures by reason`` metric:

=============  ==============================================================
reason         when
=============  ==============================================================
``missing``    no ``Authorization`` on a restricted (v2) endpoint
``scheme``     a scheme other than vapid/WebPush/Bearer, or no ``t=`` / JWT
``key``        no key, or one that is not a base64 65-octet P-256 point
``mismatch``   v2: the key's SHA-256 is not the one in the token
``token``      the JWT is malformed or its ``alg`` is not ES256
``signature``  the ES256 signature does not verify with the key
``aud``        ``aud`` missing, or none of its values is the public origin
``exp``        ``exp`` missing or not a number, past (``leeway`` allowed),
               more than ``max_lifetime`` (+ ``leeway``) ahead; or ``nbf``
               in the future
``claims``     another registered claim has the wrong type (``sub``, ...)
=============  ==============================================================

``aud`` is compared as an origin: ``scheme://host[:port]``, lower-case, the
default port left out, no path; a JSON array ``aud`` passes when one entry
does.  The checks run roughly in the order of the table: the header, the key
and the v2 key hash before the signature (the one costly step), the claims
after it.

At register (section 6.16) ``register_key_hash`` checks the ``key`` and returns
the SHA-256 put in a v2 token; a bad key is ``InvalidKey`` (status 400, errno 110).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeGuard
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from pushtwisted.errors import ConfigError
from pushtwisted.webpush.errors import Errno, WebPushError
from pushtwisted.webpush.headers import parameters

__all__ = [
    "REASONS",
    "VapidError",
    "InvalidKey",
    "VapidCredentials",
    "VerifiedVapid",
    "VapidVerifier",
    "decode_public_key",
    "key_hash",
    "register_key_hash",
    "origin",
    "parse_vapid_headers",
]

#: Every ``VapidError.reason`` label.
REASONS = frozenset(
    {"missing", "scheme", "key", "mismatch", "token", "signature", "aud", "exp", "claims"}
)

_KEY_LEN = 65
_B64_RE = re.compile(r"[A-Za-z0-9+/\-_]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_OLD_SCHEMES = frozenset({"webpush", "bearer"})
_SPACES = " \t"


class VapidError(WebPushError):
    """A VAPID check failed: 401 errno 109 with ``WWW-Authenticate: vapid``.

    :param reason: a label from ``REASONS`` (for metrics; never secret).
    """

    def __init__(self, reason: str) -> None:
        assert reason in REASONS, reason
        super().__init__(
            401,
            Errno.VAPID,
            "Invalid or missing VAPID authorization",
            headers=((b"WWW-Authenticate", b"vapid"),),
        )
        self.reason = reason

    def __repr__(self) -> str:
        return f"VapidError({self.reason!r})"


class InvalidKey(WebPushError):
    """A register ``key`` is not a 65-octet P-256 point: register status 400, errno 110."""

    def __init__(self) -> None:
        super().__init__(400, Errno.CRYPTO, "Invalid application server key")


@dataclass(frozen=True, slots=True)
class VapidCredentials:
    """The JWT and the decoded public key found in the request headers."""

    token: str
    key: bytes


@dataclass(frozen=True, slots=True)
class VerifiedVapid:
    """A verified VAPID authorization.

    :ivar key: the application server's public key (65 octets).
    :ivar claims: the JWT claims (``aud``, ``exp``, ``sub``...).
    """

    key: bytes
    claims: Mapping[str, object] = field(default_factory=dict)


def _b64decode(text: str) -> bytes:
    """Decode base64url or standard base64, padded or not.

    :raises ValueError: on anything else (mixed alphabets, bad length, stray characters).
    """
    body = text.rstrip("=")
    if not body or _B64_RE.fullmatch(body) is None:
        raise ValueError("not base64")
    if ("+" in body or "/" in body) and ("-" in body or "_" in body):
        raise ValueError("mixed base64 alphabets")
    standard = body.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


def decode_public_key(text: str) -> bytes:
    """Return the 65 octets of a base64 application-server key that is a P-256 point.

    :raises ValueError: when it does not decode, is not 65 octets, or is not
        an uncompressed point on P-256.
    """
    raw = _b64decode(text.strip(_SPACES))
    if len(raw) != _KEY_LEN or raw[0] != 0x04:
        raise ValueError("not a 65-octet uncompressed point")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # raises ValueError
    return raw


def key_hash(raw: bytes) -> bytes:
    """Return the SHA-256 of a decoded key: what a v2 token carries."""
    return hashlib.sha256(raw).digest()


def register_key_hash(key: object) -> bytes:
    """Check a register message's ``key`` and return the hash for its v2 token.

    :raises InvalidKey: when ``key`` is not a string decoding to a P-256 point.
    """
    if not isinstance(key, str):
        raise InvalidKey()
    try:
        return key_hash(decode_public_key(key))
    except ValueError:
        raise InvalidKey() from None


def origin(url: str) -> str:
    """Return the origin of an http(s) URL: ``scheme://host[:port]``, default port left out.

    :raises ValueError: when ``url`` is not an absolute http or https URL.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http or https URL")
    port = parts.port  # raises ValueError on a bad port
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _is_origin(value: object, expected: str) -> bool:
    """Return True when ``value`` is a string naming exactly the origin ``expected``."""
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return False
    try:
        return origin(value) == expected
    except ValueError:
        return False


def _param(value: str, name: str) -> str | None:
    """Return parameter ``name`` of a ``;``/``,`` separated list, unquoted (last wins)."""
    found = [v for n, v in parameters(value) if n == name]
    return found[-1].strip('"') if found else None


def parse_vapid_headers(
    authorization: str | None, crypto_key: str | None
) -> VapidCredentials | None:
    """Return the JWT and key of a request's VAPID headers, None without ``Authorization``.

    :param authorization: the ``Authorization`` header, or None when absent.
    :param crypto_key: the ``Crypto-Key`` header (repeated ones joined with ``,``).
    :raises VapidError: ``scheme`` or ``key`` (see the module's table).
    """
    if authorization is None:
        return None
    scheme, _, rest = authorization.strip(_SPACES).partition(" ")
    scheme = scheme.lower()
    if scheme == "vapid":
        token, key_text = _param(rest, "t"), _param(rest, "k")
    elif scheme in _OLD_SCHEMES:
        token = rest.strip(_SPACES)
        key_text = None if crypto_key is None else _param(crypto_key, "p256ecdsa")
    else:
        raise VapidError("scheme")
    if not token:
        raise VapidError("scheme")
    if not key_text:
        raise VapidError("key")
    try:
        return VapidCredentials(token, decode_public_key(key_text))
    except ValueError:
        raise VapidError("key") from None


class VapidVerifier:
    """Verify VAPID authorizations for the endpoints under one public URL.

    :param public_url: ``[endpoint] public_url``; its origin is the accepted ``aud``.
    :param leeway: seconds of clock skew allowed on ``exp`` and ``nbf``.
    :param max_lifetime: how far ahead of now ``exp`` may be, in seconds.
    :raises ConfigError: when ``public_url`` is not an http(s) URL.
    """

    __slots__ = ("audience", "_leeway", "_max_lifetime", "_jwt")

    def __init__(self, public_url: str, *, leeway: int = 60, max_lifetime: int = 86400) -> None:
        try:
            self.audience = origin(public_url)
        except ValueError:
            raise ConfigError(
                f"endpoint.public_url: must be an http:// or https:// URL, got {public_url!r}"
            ) from None
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        # Time claims are checked here against the given ``now``; PyJWT checks
        # the JWS, the ``alg`` and the types of sub, jti and iss.
        self._jwt = jwt.PyJWT(
            {
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            }
        )

    def verify(
        self,
        authorization: str | None,
        crypto_key: str | None,
        *,
        now: float,
        key_hash: bytes | None = None,
    ) -> VerifiedVapid | None:
        """Check the VAPID headers of a push request.

        :param authorization: the ``Authorization`` header, or None when absent.
        :param crypto_key: the ``Crypto-Key`` header, or None.
        :param now: the current time, in seconds since the epoch.
        :param key_hash: the key hash of a v2 token; None for v1, where VAPID
            is optional (no ``Authorization``: None is returned).
        :raises VapidError: on any failure, with its ``reason``.
        """
        credentials = parse_vapid_headers(authorization, crypto_key)
        if credentials is None:
            if key_hash is not None:
                raise VapidError("missing")
            return None
        if key_hash is not None and not hmac.compare_digest(
            hashlib.sha256(credentials.key).digest(), key_hash
        ):
            raise VapidError("mismatch")
        claims = self._decode(credentials)
        self._check_claims(claims, now)
        return VerifiedVapid(credentials.key, claims)

    def _decode(self, credentials: VapidCredentials) -> dict[str, object]:
        """Verify the JWS and return its claims."""
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), credentials.key)
        try:
            claims: dict[str, object] = self._jwt.decode(
                credentials.token, public_key, algorithms=["ES256"]
            )
        except jwt.InvalidSignatureError:
            raise VapidError("signature") from None
        except (jwt.DecodeError, jwt.InvalidAlgorithmError):
            raise VapidError("token") from None
        except jwt.PyJWTError:
            raise VapidError("claims") from None
        return claims

    def _check_claims(self, claims: Mapping[str, object], now: float) -> None:
        """Check ``aud``, ``exp`` and ``nbf`` against the public origin and ``now``."""
        aud = claims.get("aud")
        values = aud if isinstance(aud, list) else [aud]
        if not any(_is_origin(value, self.audience) for value in values):
            raise VapidError("aud")
        exp = claims.get("exp")
        if not _is_time(exp) or not (
            now - self._leeway < exp <= now + self._max_lifetime + self._leeway
        ):
            raise VapidError("exp")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_time(nbf) or nbf > now + self._leeway):
            raise VapidError("exp")


def _is_time(value: object) -> TypeGuard[int | float]:
    """Return True when ``value`` is a finite JSON number (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
