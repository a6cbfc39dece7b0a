"""Tests for ``pushtwisted.web._form``'s form fast path: the same fields as ``parse_qsl``."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.web._form import _form_fields, _parsed_form_fields, _plain_form_fields
from pushtwisted.web._util import WebError

#: Pieces that make bodies near the fast path's shape, and every way out of it.
_PIECES = st.sampled_from(
    [b"version", b"data", b"=", b"&", b";", b"%", b"%20", b"%zz", b"+", b" ", b"0", b"12"]
    + [b"9" * 20, b"abc", b"-_.~", b"\x00", b"\x7f", b"\xc3\xa9", b"\xff", b"versio", b"Data"]
)
_BODIES = st.one_of(st.binary(max_size=80), st.lists(_PIECES, max_size=12).map(b"".join))


def _outcome(parse: object, body: bytes) -> object:
    """What parsing ``body`` gives: its fields, or the error answer's status and errno."""
    assert callable(parse)
    try:
        return parse(body)
    except WebError as e:
        return ("error", e.http_status, e.errno)


class PlainFormTests(SynchronousTestCase):
    """``version=N`` and ``version=N&data=...`` skip ``parse_qsl``, with its answer."""

    @settings(max_examples=2000, deadline=None)
    @given(body=_BODIES)
    @example(body=b"version=12&data=hello.world")
    @example(body=b"version=&data=")
    @example(body=b"version=1&data=a=b")
    @example(body=b"version=1&data=a+b")
    @example(body=b"version=1&data=%41")
    @example(body=b"version=1&data=a&data=b")
    @example(body=b"version=1;data=x")
    def test_same_fields_as_parse_qsl(self, body: bytes) -> None:
        """Any body: the fields (or the error) are those of the general parser."""
        self.assertEqual(_outcome(_form_fields, body), _outcome(_parsed_form_fields, body))
        plain = _plain_form_fields(body)
        if plain is not None:
            self.assertEqual(plain, _parsed_form_fields(body))

    def test_common_bodies_take_the_fast_path(self) -> None:
        """The usual bodies are matched; escapes, ``+``, other fields and non-ASCII are not."""
        self.assertEqual(_plain_form_fields(b"version=12"), {"version": "12"})
        self.assertEqual(
            _plain_form_fields(b"version=12&data=a.b-c_d~e"),
            {"version": "12", "data": "a.b-c_d~e"},
        )
        self.assertEqual(_plain_form_fields(b"version=&data="), {"version": "", "data": ""})
        for body in (
            b"version=1&data=%41",
            b"version=1&data=a+b",
            b"data=x&version=1",
            b"version=1&data=x&other=y",
            b"version=1&data=\xc3\xa9",
            b"version=x",
            b"",
        ):
            self.assertIsNone(_plain_form_fields(body), body)
