"""Tests for ``pushtwisted.webpush.vapid``: header forms, key decoding and the ES256 JWT
checks, with py-vapid and pywebpush as the independent signers."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
import py_vapid
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import ConfigError
from pushtwisted.webpush.vapid import (
    REASONS,
    InvalidKey,
    VapidCredentials,
    VapidError,
    VapidVerifier,
    decode_public_key,
    key_hash,
    origin,
    parse_vapid_headers,
    register_key_hash,
)
from tests._webpush_refs import Device, b64url, b64url_decode, public_key_bytes, pywebpush_request

NOW = 1_900_000_000
PUBLIC_URL = "https://push.example.com"
AUD = "https://push.example.com"


def _new_vapid(cls: type[py_vapid.Vapid01] = py_vapid.Vapid) -> py_vapid.Vapid01:
    vapid = cls()
    vapid.generate_keys()
    return vapid


def _raw_key(vapid: py_vapid.Vapid01) -> bytes:
    return public_key_bytes(vapid.private_key)


def _claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {"aud": AUD, "exp": NOW + 12 * 3600, "sub": "mailto:t@example.com"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(vapid: py_vapid.Vapid01, claims: dict[str, object]) -> dict[str, str]:
    """Sign with py-vapid, as an application server does."""
    headers: dict[str, str] = vapid.sign(claims)
    return headers


def _pyjwt_token(vapid: py_vapid.Vapid01, claims: dict[str, object], **kw: object) -> str:
    """Sign arbitrary claims with PyJWT (py-vapid refuses some of the bad ones we test)."""
    return jwt.encode(claims, vapid.private_key, algorithm="ES256", **kw)


def _rfc8292(token: str, key: bytes) -> str:
    return f"vapid t={token},k={b64url(key)}"


class VerifierTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.verifier = VapidVerifier(PUBLIC_URL)
        self.vapid = _new_vapid()
        self.key = _raw_key(self.vapid)

    def verify(
        self, authorization: str | None, crypto_key: str | None = None, **kw: object
    ) -> object:
        return self.verifier.verify(authorization, crypto_key, now=kw.pop("now", NOW), **kw)

    def assertReason(
        self, reason: str, authorization: str | None, crypto_key: str | None = None, **kw: object
    ) -> VapidError:
        e = self.assertRaises(VapidError, self.verify, authorization, crypto_key, **kw)
        self.assertEqual(e.reason, reason)
        self.assertIn(e.reason, REASONS)
        self.assertEqual((e.status, e.errno), (401, 109))
        self.assertEqual(e.headers, ((b"WWW-Authenticate", b"vapid"),))
        return e


class PyVapidTests(VerifierTestCase):
    """JWTs and headers made by py-vapid in both its forms."""

    def test_rfc8292_form_verifies(self) -> None:
        """py-vapid's ``Vapid`` (``vapid t=,k=``) verifies; the key and claims come back."""
        headers = _sign(self.vapid, _claims())
        self.assertNotIn("Crypto-Key", headers)
        result = self.verifier.verify(headers["Authorization"], None, now=NOW)
        assert result is not None
        self.assertEqual(result.key, self.key)
        self.assertEqual(result.claims["aud"], AUD)
        self.assertEqual(result.claims["sub"], "mailto:t@example.com")

    def test_draft01_form_verifies(self) -> None:
        """py-vapid's ``Vapid01`` (``WebPush <JWT>`` + ``Crypto-Key: p256ecdsa=``) verifies."""
        vapid = _new_vapid(py_vapid.Vapid01)
        headers = _sign(vapid, _claims())
        self.assertTrue(headers["Authorization"].startswith("WebPush "))
        result = self.verifier.verify(headers["Authorization"], headers["Crypto-Key"], now=NOW)
        assert result is not None
        self.assertEqual(result.key, _raw_key(vapid))

    def test_draft01_combined_with_dh(self) -> None:
        """``p256ecdsa`` is found next to ``dh`` with ``;`` or ``,``, before or after it."""
        vapid = _new_vapid(py_vapid.Vapid01)
        headers = _sign(vapid, _claims())
        key = headers["Crypto-Key"]
        dh = "dh=" + b64url(public_key_bytes(Device().private_key))
        for crypto_key in [f"{dh};{key}", f"{key};{dh}", f"{dh}, {key}", f"{key} ,{dh}"]:
            result = self.verifier.verify(headers["Authorization"], crypto_key, now=NOW)
            assert result is not None
            self.assertEqual(result.key, _raw_key(vapid), crypto_key)

    def test_tampered_is_signature(self) -> None:
        """Changing the claims of a py-vapid JWT (keeping its signature) fails: ``signature``."""
        token = _sign(self.vapid, _claims())["Authorization"].split("t=")[1].split(",")[0]
        header, _, signature = token.split(".")
        forged = b64url(json.dumps(_claims(sub="mailto:evil@example.com")).encode())
        self.assertReason("signature", _rfc8292(f"{header}.{forged}.{signature}", self.key))

    def test_flipped_signature_bit(self) -> None:
        """Any single bit flipped in the signature fails."""
        token = _sign(self.vapid, _claims())["Authorization"].split("t=")[1].split(",")[0]
        head, _, sig = token.rpartition(".")
        raw = b64url_decode(sig)
        for i in (0, 31, 32, 63):
            bad = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
            self.assertReason("signature", _rfc8292(f"{head}.{b64url(bad)}", self.key))

    def test_other_key_is_signature(self) -> None:
        """A JWT signed by one key and sent with another fails: ``signature``."""
        token = _sign(self.vapid, _claims())["Authorization"].split("t=")[1].split(",")[0]
        self.assertReason("signature", _rfc8292(token, _raw_key(_new_vapid())))

    def test_wrong_aud(self) -> None:
        """py-vapid JWTs for another host, scheme or port fail: ``aud``."""
        for aud in [
            "https://other.example.com",
            "http://push.example.com",
            "https://push.example.com:8443",
        ]:
            self.assertReason("aud", _sign(self.vapid, _claims(aud=aud))["Authorization"])

    def test_expired(self) -> None:
        """A py-vapid JWT past its ``exp`` (beyond the 60 s leeway) fails: ``exp``."""
        headers = _sign(self.vapid, _claims(exp=NOW - 61))
        self.assertReason("exp", headers["Authorization"])
        self.assertIsNotNone(self.verify(_sign(self.vapid, _claims(exp=NOW - 59))["Authorization"]))

    def test_too_far_ahead(self) -> None:
        """An ``exp`` more than 24 h (plus leeway) ahead fails: ``exp``."""
        day = 86400
        self.assertIsNotNone(
            self.verify(_sign(self.vapid, _claims(exp=NOW + day))["Authorization"])
        )
        self.assertIsNotNone(
            self.verify(_sign(self.vapid, _claims(exp=NOW + day + 60))["Authorization"])
        )
        self.assertReason("exp", _sign(self.vapid, _claims(exp=NOW + day + 61))["Authorization"])

    def test_now_is_the_given_time(self) -> None:
        """The same JWT is valid or expired depending only on ``now``."""
        authorization = _sign(self.vapid, _claims(exp=NOW))["Authorization"]
        self.assertIsNotNone(self.verify(authorization, now=NOW - 3600))
        self.assertReason("exp", authorization, now=NOW + 3600)


class PywebpushTests(VerifierTestCase):
    """The Authorization header pywebpush sends for a real endpoint URL."""

    def test_pywebpush_aud_from_endpoint(self) -> None:
        """pywebpush derives ``aud`` from the endpoint; it matches the public URL's origin."""
        verifier = VapidVerifier("http://127.0.0.1:8082/")
        claims: dict[str, str | int] = {"sub": "mailto:t@example.com", "exp": 4_000_000_000}
        for cls in (py_vapid.Vapid, py_vapid.Vapid01):
            vapid = _new_vapid(cls)
            request = pywebpush_request(
                self.mktemp(),
                Device(),
                "http://127.0.0.1:8082/wpush/v2/token",
                b"hi",
                encoding="aesgcm",
                vapid=vapid,
                claims=claims,
            )
            result = verifier.verify(
                request.headers["authorization"],
                request.headers.get("crypto-key"),
                now=4_000_000_000 - 3600,
                key_hash=key_hash(_raw_key(vapid)),
            )
            assert result is not None
            self.assertEqual(result.claims["aud"], "http://127.0.0.1:8082")

    def test_pywebpush_wrong_key_is_mismatch(self) -> None:
        """A pywebpush request signed with another key than the v2 token's fails: ``mismatch``."""
        verifier = VapidVerifier("http://127.0.0.1:8082")
        request = pywebpush_request(
            self.mktemp(),
            Device(),
            "http://127.0.0.1:8082/wpush/v2/token",
            b"hi",
            vapid=_new_vapid(),
            claims={"sub": "mailto:t@example.com", "exp": 4_000_000_000},
        )
        e = self.assertRaises(
            VapidError,
            verifier.verify,
            request.headers["authorization"],
            None,
            now=4_000_000_000 - 3600,
            key_hash=key_hash(self.key),
        )
        self.assertEqual(e.reason, "mismatch")


class HeaderFormTests(VerifierTestCase):
    """``parse_vapid_headers`` and the scheme/key failures."""

    def setUp(self) -> None:
        super().setUp()
        self.token = _pyjwt_token(self.vapid, _claims())

    def test_absent_on_v1_is_none(self) -> None:
        """No Authorization on a v1 endpoint is no VAPID at all, not a failure."""
        self.assertIsNone(parse_vapid_headers(None, None))
        self.assertIsNone(self.verify(None, f"p256ecdsa={b64url(self.key)}"))

    def test_absent_on_v2_is_missing(self) -> None:
        """No Authorization on a v2 endpoint fails: ``missing``."""
        self.assertReason("missing", None, key_hash=key_hash(self.key))

    def test_scheme_case_and_spaces(self) -> None:
        """The scheme is case-insensitive; spaces around parameters are ignored."""
        k = b64url(self.key)
        for authorization in [
            f"vapid t={self.token},k={k}",
            f"VAPID t={self.token}, k={k}",
            f"Vapid  k={k} ,  t={self.token} ",
            f'vapid t="{self.token}", k="{k}", extra=1',
        ]:
            self.assertEqual(
                parse_vapid_headers(authorization, None),
                VapidCredentials(self.token, self.key),
                authorization,
            )
            self.assertIsNotNone(self.verify(authorization))
        for scheme in ("WebPush", "webpush", "Bearer", "BEARER"):
            self.assertIsNotNone(self.verify(f"{scheme} {self.token}", f"p256ecdsa={k}"))

    def test_bad_scheme(self) -> None:
        """Other schemes, an empty header or a missing JWT fail: ``scheme``."""
        k = b64url(self.key)
        for authorization in [
            "",
            "Basic dXNlcjpwYXNz",
            f"key={k}",
            f"vapid k={k}",
            f"vapid t=,k={k}",
            "WebPush",
            "WebPush ",
        ]:
            self.assertReason("scheme", authorization, f"p256ecdsa={k}")

    def test_missing_or_bad_key(self) -> None:
        """No key, or one that is not a 65-octet P-256 point, fails: ``key``."""
        self.assertReason("key", f"vapid t={self.token}")
        self.assertReason("key", f"vapid t={self.token},k=")
        self.assertReason("key", f"WebPush {self.token}")
        self.assertReason("key", f"WebPush {self.token}", f"dh={b64url(self.key)}")
        for bad in [b"\x04" + self.key[1:-1], self.key[1:], b"\x02" + self.key[1:33], b"\x04" * 65]:
            self.assertReason("key", _rfc8292(self.token, bad))
        self.assertReason("key", f"vapid t={self.token},k=!!notbase64!!")

    def test_key_mismatch_on_v2(self) -> None:
        """A valid JWT whose key hashes differently from the v2 token's fails: ``mismatch``."""
        other = key_hash(_raw_key(_new_vapid()))
        self.assertReason("mismatch", _rfc8292(self.token, self.key), key_hash=other)
        result = self.verify(_rfc8292(self.token, self.key), key_hash=key_hash(self.key))
        self.assertIsNotNone(result)

    def test_mismatch_checked_before_signature(self) -> None:
        """On v2 a foreign key is refused as ``mismatch`` without verifying its signature."""
        self.assertReason(
            "mismatch", _rfc8292("not.a.jwt", _raw_key(_new_vapid())), key_hash=key_hash(self.key)
        )


class KeyDecodingTests(SynchronousTestCase):
    """``decode_public_key`` and the register-time ``register_key_hash`` (section 6.16)."""

    def setUp(self) -> None:
        self.key = public_key_bytes(ec.generate_private_key(ec.SECP256R1()))

    def test_forms(self) -> None:
        """Unpadded and padded base64url, and standard base64, all decode to the point."""
        std = base64.b64encode(self.key).decode()
        url = base64.urlsafe_b64encode(self.key).decode()
        for text in [url.rstrip("="), url, std, std.rstrip("="), f" {url} "]:
            self.assertEqual(decode_public_key(text), self.key, text)

    def test_standard_alphabet_needed_for_plus_slash(self) -> None:
        """A key with ``+`` or ``/`` decodes as standard base64 to the same bytes."""
        while not {"+", "/"} & set(base64.b64encode(self.key).decode()):
            self.key = public_key_bytes(ec.generate_private_key(ec.SECP256R1()))
        std = base64.b64encode(self.key).decode()
        self.assertEqual(decode_public_key(std), self.key)

    def test_rejected(self) -> None:
        """Mixed alphabets, bad lengths, compressed or off-curve points are ``ValueError``."""
        url = b64url(self.key)
        compressed = ec.generate_private_key(ec.SECP256R1()).public_key()
        short = compressed.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        off_curve = self.key[:-1] + bytes([self.key[-1] ^ 1])
        for bad in [
            "",
            "=",
            url[:-1],
            url + "A",
            url[:-2] + "+-",
            b64url(short),
            b64url(off_curve),
            b64url(b"\x04" + bytes(64)),
            "\u00e9" * 87,
        ]:
            self.assertRaises(ValueError, decode_public_key, bad)

    def test_register_key_hash(self) -> None:
        """A good register key gives the SHA-256 of its bytes; padding does not change it."""
        url = base64.urlsafe_b64encode(self.key).decode()
        digest = hashlib.sha256(self.key).digest()
        self.assertEqual(register_key_hash(url), digest)
        self.assertEqual(register_key_hash(url.rstrip("=")), digest)
        self.assertEqual(key_hash(self.key), digest)

    def test_register_key_invalid(self) -> None:
        """A bad or non-string register key is ``InvalidKey``: status 400, errno 110."""
        for bad in ["", "abc", b64url(self.key[:-1]), None, 5, ["x"], b64url(self.key).encode()]:
            e = self.assertRaises(InvalidKey, register_key_hash, bad)
            self.assertEqual((e.status, e.errno), (400, 110))


class ClaimTests(VerifierTestCase):
    """The JWT and its claims, signed with PyJWT where py-vapid would refuse."""

    def check(self, claims: dict[str, object], reason: str | None, **kw: object) -> None:
        authorization = _rfc8292(_pyjwt_token(self.vapid, claims, **kw), self.key)
        if reason is None:
            self.assertIsNotNone(self.verify(authorization))
        else:
            self.assertReason(reason, authorization)

    def test_aud_forms(self) -> None:
        """``aud`` passes as the origin in any case, with the default port, or in a list."""
        for aud in [
            AUD,
            "HTTPS://Push.Example.COM",
            "https://push.example.com:443",
            ["https://other.example", AUD],
        ]:
            self.check(_claims(aud=aud), None)

    def test_aud_rejected(self) -> None:
        """A missing, non-string, path-carrying, user-carrying or non-http ``aud`` fails."""
        for aud in [
            None,
            5,
            [],
            ["https://other.example"],
            AUD + "/",
            AUD + "/wpush",
            AUD + "?x",
            "https://user@push.example.com",
            "push.example.com",
            "wss://push.example.com",
        ]:
            self.check(_claims(aud=aud), "aud")

    def test_exp_required_numeric(self) -> None:
        """A missing, string, boolean or infinite ``exp`` fails: ``exp``."""
        self.check(_claims(exp=None), "exp")
        self.check(_claims(exp=str(NOW + 60)), "exp")
        self.check(_claims(exp=True), "exp")
        self.check(_claims(exp=NOW + 100.5), None)

    def test_nbf(self) -> None:
        """An ``nbf`` in the future (beyond leeway) fails: ``exp``; a past one passes."""
        self.check(_claims(nbf=NOW - 10), None)
        self.check(_claims(nbf=NOW + 60), None)
        self.check(_claims(nbf=NOW + 61), "exp")
        self.check(_claims(nbf="soon"), "exp")

    def test_iat_ignored(self) -> None:
        """``iat`` is not a VAPID claim: even in the future it does not fail."""
        self.check(_claims(iat=NOW + 10_000), None)

    def test_sub_optional_but_typed(self) -> None:
        """``sub`` may be absent; present, it must be a string: ``claims``."""
        self.check(_claims(sub=None), None)
        self.check(_claims(sub=5), "claims")

    def test_wrong_algorithms(self) -> None:
        """A JWT with ``alg`` none, HS256 or ES384 fails: ``token``."""
        none = jwt.encode(_claims(), None, algorithm="none")
        self.assertReason("token", _rfc8292(none, self.key))
        hs = jwt.encode(_claims(), b64url(self.key), algorithm="HS256")
        self.assertReason("token", _rfc8292(hs, self.key))
        p384 = ec.generate_private_key(ec.SECP384R1())
        es384 = jwt.encode(_claims(), p384, algorithm="ES384")
        self.assertReason("token", _rfc8292(es384, self.key))

    def test_malformed_jwt(self) -> None:
        """A JWT that is not three base64url JSON parts fails: ``token``."""
        good = _pyjwt_token(self.vapid, _claims())
        head, payload, sig = good.split(".")
        for token in [
            "abc",
            "a.b",
            f"{head}.{payload}",
            f"{head}.{payload}.{sig}.x",
            f"!!.{payload}.{sig}",
            f"{b64url(b'not json')}.{payload}.{sig}",
        ]:
            self.assertReason("token", _rfc8292(token, self.key))
        # A signed payload that is not a JSON object: the signature is valid, the claims are not.
        signed_array = jwt.api_jws.encode(b"[1,2]", self.vapid.private_key, algorithm="ES256")
        self.assertReason("token", _rfc8292(signed_array, self.key))

    def test_der_signature_rejected(self) -> None:
        """An ES256 signature in DER (not raw ``r||s``) fails."""
        good = _pyjwt_token(self.vapid, _claims())
        signing_input = good.rsplit(".", 1)[0]
        der = self.vapid.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        self.assertReason("signature", _rfc8292(f"{signing_input}.{b64url(der)}", self.key))


class OriginTests(SynchronousTestCase):
    """``origin`` and the verifier's public URL."""

    def test_origin(self) -> None:
        """Scheme and host lower-cased, default port dropped, path and slash dropped."""
        for url, expected in [
            ("https://push.example.com", "https://push.example.com"),
            ("https://Push.Example.com:443/", "https://push.example.com"),
            ("http://localhost:80/push/", "http://localhost"),
            ("HTTP://127.0.0.1:8082", "http://127.0.0.1:8082"),
            ("https://h:8443/a/b?q", "https://h:8443"),
            ("http://[::1]:8082/", "http://[::1]:8082"),
        ]:
            self.assertEqual(origin(url), expected)

    def test_bad_urls(self) -> None:
        """Non-http(s), host-less and bad-port URLs are ``ValueError``."""
        for url in ["", "push.example.com", "ws://h", "https://", "http://h:99999", "http://h:x"]:
            self.assertRaises(ValueError, origin, url)

    def test_verifier_audience(self) -> None:
        """The verifier accepts the origin of its public URL; a bad URL is ``ConfigError``."""
        self.assertEqual(VapidVerifier("https://push.example.com:443/x").audience, AUD)
        e = self.assertRaises(ConfigError, VapidVerifier, "ftp://x")
        self.assertIn("endpoint.public_url", str(e))
