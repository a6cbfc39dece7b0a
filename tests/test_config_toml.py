"""Tests for ``pushtwisted.config_toml``: the effective configuration as TOML."""

from __future__ import annotations

import dataclasses
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import Config, CryptoConfig, RouterConfig, parse_config
from pushtwisted.config_toml import SECRET_MASK, config_document, dumps, effective_toml
from pushtwisted.tokens import generate_key

_SECRET = "a-router-secret-of-some-length"


class DumpsTests(SynchronousTestCase):
    """``dumps`` writes TOML that ``tomllib`` reads back unchanged."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.dictionaries(
                st.text(min_size=1, max_size=8),
                st.one_of(
                    st.booleans(),
                    st.integers(min_value=-(2**63), max_value=2**63 - 1),
                    st.floats(allow_nan=False),
                    st.text(),
                    st.lists(st.text(), max_size=3),
                ),
                max_size=4,
            ),
            max_size=3,
        )
    )
    def test_round_trip(self, document: dict[str, dict[str, object]]) -> None:
        """Any names, strings (quotes, control characters, any Unicode), numbers,
        booleans and lists of strings come back as they went in."""
        self.assertEqual(tomllib.loads(dumps(document)), document)

    def test_layout(self) -> None:
        """One ``[section]`` per table, ``key = value`` lines, a blank line between."""
        text = dumps({"a": {"x": 1, "y": [""]}, "b": {"z": 'q"\n'}})
        self.assertEqual(text, '[a]\nx = 1\ny = [""]\n\n[b]\nz = "q\\"\\n"\n')

    def test_other_types_refused(self) -> None:
        """A value a configuration cannot hold is a ``TypeError``."""
        self.assertRaises(TypeError, dumps, {"a": {"x": {"nested": 1}}})


class EffectiveTomlTests(SynchronousTestCase):
    """``effective_toml`` writes a whole ``Config``, secrets masked."""

    def test_defaults_round_trip(self) -> None:
        """The defaults written and read back give the defaults."""
        self.assertEqual(parse_config(tomllib.loads(effective_toml(Config())), {}), Config())

    def test_values_round_trip(self) -> None:
        """Values that are not the defaults are written as they are."""
        config = parse_config(
            {
                "websocket": {"origins": ["https://a.example", "app://b"], "backlog": 7},
                "endpoint": {"public_url": "https://push.example.com", "cors": True},
                "client": {"retry_interval": 0.25},
                "storage": {"path": 'C:\\state "x"'},
            },
            {},
        )
        self.assertEqual(parse_config(tomllib.loads(effective_toml(config)), {}), config)

    def test_secrets_masked(self) -> None:
        """Each key and the router secret are masked; their number still shows."""
        keys = [generate_key(), generate_key()]
        config = dataclasses.replace(
            Config(),
            crypto=CryptoConfig(keys=keys),
            router=RouterConfig(secret=_SECRET),
        )
        text = effective_toml(config)
        for secret in (*keys, _SECRET):
            self.assertNotIn(secret, text)
        document = tomllib.loads(text)
        self.assertEqual(document["crypto"]["keys"], [SECRET_MASK, SECRET_MASK])
        self.assertEqual(document["router"]["secret"], SECRET_MASK)

    def test_unset_secrets_stay_empty(self) -> None:
        """An unset secret is shown empty, not masked, so "not set" is visible."""
        document = config_document(Config())
        self.assertEqual((document["crypto"]["keys"], document["router"]["secret"]), ([], ""))

    def test_unmasked_document(self) -> None:
        """``mask_secrets=False`` gives the values themselves."""
        config = dataclasses.replace(Config(), router=RouterConfig(secret=_SECRET))
        self.assertEqual(config_document(config, mask_secrets=False)["router"]["secret"], _SECRET)
