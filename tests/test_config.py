"""Tests for ``pushtwisted.config`` and the shipped ``config.sample.toml``."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import Config, load_config, parse_config
from pushtwisted.errors import ConfigError

SAMPLE = Path(__file__).resolve().parent.parent / "config.sample.toml"


class SampleConfigTests(SynchronousTestCase):
    """``config.sample.toml`` documents exactly the defaults."""

    def test_sample_equals_defaults(self) -> None:
        """Loading the sample file gives the same ``Config`` as the built-in defaults."""
        self.assertEqual(load_config(SAMPLE, environ={}), Config())

    def test_sample_has_every_key(self) -> None:
        """Every section and field of ``Config`` appears in the sample, and nothing else."""
        with open(SAMPLE, "rb") as f:
            document = tomllib.load(f)
        defaults = Config()
        expected = {
            section.name: {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
            for section in dataclasses.fields(Config)
        }
        found = {name: set(table) for name, table in document.items()}
        self.assertEqual(found, expected)

    def test_storage_is_last_section(self) -> None:
        """``[storage]`` is the last section of the sample, so new storage keys go at the end."""
        with open(SAMPLE, "rb") as f:
            document = tomllib.load(f)
        self.assertEqual(list(document)[-1], "storage")


class FileErrorTests(SynchronousTestCase):
    """Problems with the file itself are ``ConfigError``."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text, encoding="utf-8")
        return path

    def test_no_file_gives_defaults(self) -> None:
        """Without a path the defaults are used."""
        self.assertEqual(load_config(None, environ={}), Config())

    def test_missing_file(self) -> None:
        """A path that does not exist is a ``ConfigError`` naming the path."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertIn(path, str(error))
        self.assertIn("cannot read", str(error))

    def test_invalid_toml(self) -> None:
        """A file that is not TOML is a ``ConfigError`` saying so."""
        path = self.write("[websocket\nlisten = \n")
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertIn("invalid TOML", str(error))

    def test_file_values_are_used(self) -> None:
        """Values in the file replace the defaults of their keys only."""
        path = self.write('[client]\nretry_interval = 5\n[crypto]\nkeys = ["k1", "k2"]\n')
        config = load_config(path, environ={})
        self.assertEqual(config.client.retry_interval, 5.0)
        self.assertEqual(config.crypto.keys, ["k1", "k2"])
        self.assertEqual(config.client.max_channels, Config().client.max_channels)


class ValidationTests(SynchronousTestCase):
    """Unknown keys and bad values are refused with the key in the message."""

    def assertConfigError(self, document: dict[str, object], *fragments: str) -> None:
        error = self.assertRaises(ConfigError, parse_config, document, {})
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_unknown_section(self) -> None:
        """An unknown section is named in the error."""
        self.assertConfigError({"websockets": {}}, "websockets", "unknown section")

    def test_section_not_a_table(self) -> None:
        """A section given as a plain value is refused."""
        self.assertConfigError({"client": 3}, "client", "table")

    def test_unknown_key(self) -> None:
        """An unknown key is named with its section."""
        self.assertConfigError({"websocket": {"port": 8080}}, "websocket.port", "unknown key")

    def test_wrong_type_string_for_int(self) -> None:
        """A string where an integer is expected names the key."""
        self.assertConfigError({"websocket": {"backlog": "10"}}, "websocket.backlog", "integer")

    def test_wrong_type_bool_for_int(self) -> None:
        """A boolean is not accepted as an integer."""
        self.assertConfigError({"client": {"max_channels": True}}, "client.max_channels")

    def test_wrong_type_float_for_int(self) -> None:
        """A float is not accepted as an integer."""
        self.assertConfigError({"endpoint": {"max_data": 1.5}}, "endpoint.max_data")

    def test_wrong_type_for_bool(self) -> None:
        """A string where a boolean is expected names the key."""
        self.assertConfigError({"endpoint": {"cors": "yes"}}, "endpoint.cors", "boolean")

    def test_wrong_type_for_str(self) -> None:
        """A number where a string is expected names the key."""
        self.assertConfigError({"endpoint": {"listen": 8081}}, "endpoint.listen", "string")

    def test_wrong_type_for_list(self) -> None:
        """A string where a list is expected names the key."""
        self.assertConfigError({"crypto": {"keys": "abc"}}, "crypto.keys", "list")

    def test_wrong_item_type_in_list(self) -> None:
        """A list with a non-string item is refused."""
        self.assertConfigError({"websocket": {"origins": ["http://a", 3]}}, "websocket.origins")

    def test_int_widens_to_float(self) -> None:
        """An integer is accepted for a float key and stored as a float."""
        config = parse_config({"client": {"hello_timeout": 7}}, {})
        self.assertEqual(config.client.hello_timeout, 7.0)
        self.assertIsInstance(config.client.hello_timeout, float)

    def test_zero_backlog_out_of_range(self) -> None:
        """A backlog of 0 is out of range and named."""
        self.assertConfigError({"websocket": {"backlog": 0}}, "websocket.backlog", "> 0")

    def test_negative_interval_out_of_range(self) -> None:
        """A negative retry interval is out of range and named."""
        self.assertConfigError({"client": {"retry_interval": -1}}, "client.retry_interval", ">= 0")

    def test_zero_ttl_out_of_range(self) -> None:
        """A tombstone TTL of 0 is out of range and named."""
        self.assertConfigError({"storage": {"ttl_deleted": 0}}, "storage.ttl_deleted")

    def test_unknown_backend(self) -> None:
        """An unknown storage backend is refused, naming the key."""
        self.assertConfigError({"storage": {"backend": "dynamodb"}}, "storage.backend")

    def test_zero_allowed_where_documented(self) -> None:
        """Zero turns off the timers and limits documented as "0 = off"."""
        config = parse_config(
            {"client": {"retry_interval": 0, "min_ping_interval": 0, "max_channels": 0}}, {}
        )
        self.assertEqual(
            (
                config.client.retry_interval,
                config.client.min_ping_interval,
                config.client.max_channels,
            ),
            (0.0, 0.0, 0),
        )


class EnvironmentTests(SynchronousTestCase):
    """``SIMPLEPUSH_<SECTION>_<KEY>`` variables override the file."""

    def test_int(self) -> None:
        """An integer variable is parsed as an integer."""
        config = parse_config({}, {"SIMPLEPUSH_WEBSOCKET_BACKLOG": "50"})
        self.assertEqual(config.websocket.backlog, 50)

    def test_float(self) -> None:
        """A float variable is parsed as a float."""
        config = parse_config({}, {"SIMPLEPUSH_CLIENT_RETRY_INTERVAL": "1.5"})
        self.assertEqual(config.client.retry_interval, 1.5)

    def test_bool_true_and_false(self) -> None:
        """Boolean variables accept true/false spellings."""
        on = parse_config({}, {"SIMPLEPUSH_ENDPOINT_CORS": "true"})
        off = parse_config({"endpoint": {"cors": True}}, {"SIMPLEPUSH_ENDPOINT_CORS": "no"})
        self.assertEqual((on.endpoint.cors, off.endpoint.cors), (True, False))

    def test_list_with_commas(self) -> None:
        """A list variable is split on commas, with blanks around items dropped."""
        config = parse_config({}, {"SIMPLEPUSH_WEBSOCKET_ORIGINS": "http://a, https://b:8443"})
        self.assertEqual(config.websocket.origins, ["http://a", "https://b:8443"])

    def test_str_with_underscores_in_key(self) -> None:
        """A string variable whose key has underscores reaches that key."""
        config = parse_config({}, {"SIMPLEPUSH_ENDPOINT_PUBLIC_URL": "https://push.example.com"})
        self.assertEqual(config.endpoint.public_url, "https://push.example.com")

    def test_overrides_file(self) -> None:
        """A variable wins over the same key in the file."""
        config = parse_config(
            {"storage": {"path": "/from/file"}}, {"SIMPLEPUSH_STORAGE_PATH": "/from/env"}
        )
        self.assertEqual(config.storage.path, "/from/env")

    def test_name_is_case_insensitive(self) -> None:
        """A lower-case variable name works too."""
        config = parse_config({}, {"simplepush_client_max_channels": "7"})
        self.assertEqual(config.client.max_channels, 7)

    def test_other_variables_ignored(self) -> None:
        """Variables without the prefix leave the defaults alone."""
        self.assertEqual(parse_config({}, {"WEBSOCKET_BACKLOG": "x", "PATH": "/bin"}), Config())

    def test_bad_int(self) -> None:
        """A non-numeric integer variable is an error naming the variable."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_WEBSOCKET_BACKLOG": "many"}
        )
        self.assertIn("SIMPLEPUSH_WEBSOCKET_BACKLOG", str(error))

    def test_float_text_for_int(self) -> None:
        """A decimal fraction is refused for an integer key."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_ENDPOINT_MAX_DATA": "1.5"}
        )
        self.assertIn("SIMPLEPUSH_ENDPOINT_MAX_DATA", str(error))

    def test_bad_float(self) -> None:
        """A non-numeric float variable is an error naming the variable."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_CLIENT_HELLO_TIMEOUT": "soon"}
        )
        self.assertIn("SIMPLEPUSH_CLIENT_HELLO_TIMEOUT", str(error))

    def test_bad_bool(self) -> None:
        """A boolean variable that is not a boolean word is an error naming the variable."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_STORAGE_STORE_DATA": "maybe"}
        )
        self.assertIn("SIMPLEPUSH_STORAGE_STORE_DATA", str(error))

    def test_out_of_range(self) -> None:
        """An out-of-range value from a variable is refused, naming the key."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_WEBSOCKET_MAX_MESSAGE_SIZE": "0"}
        )
        self.assertIn("websocket.max_message_size", str(error))

    def test_unknown_key(self) -> None:
        """A variable for an unknown key of a known section is an error naming it."""
        error = self.assertRaises(ConfigError, parse_config, {}, {"SIMPLEPUSH_CLIENT_PONG": "1"})
        self.assertIn("SIMPLEPUSH_CLIENT_PONG", str(error))
        self.assertIn("client.pong", str(error))

    def test_load_config_reads_environment(self) -> None:
        """``load_config`` applies the given environment on top of the file."""
        path = self.mktemp()
        Path(path).write_text("[client]\nmax_channels = 3\n", encoding="utf-8")
        config = load_config(path, environ={"SIMPLEPUSH_CLIENT_MAX_CHANNELS": "4"})
        self.assertEqual(config.client.max_channels, 4)
