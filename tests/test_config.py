"""Tests for ``pushtwisted.config`` and the shipped ``config.sample.toml``."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import Config, load_config, parse_config
from pushtwisted.errors import ConfigError
from pushtwisted.tokens import generate_key

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
        keys = [generate_key(), generate_key()]
        path = self.write(
            f'[client]\nretry_interval = 5\n[crypto]\nkeys = ["{keys[0]}", "{keys[1]}"]\n'
        )
        config = load_config(path, environ={})
        self.assertEqual(config.client.retry_interval, 5.0)
        self.assertEqual(config.crypto.keys, keys)
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


class AllProblemsTests(SynchronousTestCase):
    """One ``ConfigError`` lists every problem of the file and the environment."""

    def test_every_problem_listed_once(self) -> None:
        """Bad values, unknown keys and sections, and bad variables are all reported,
        each on its own line, in file order then variable order."""
        document: dict[str, object] = {
            "websockets": {},
            "websocket": {"backlog": 0, "port": 1},
            "client": {"retry_interval": "soon"},
        }
        environ = {"SIMPLEPUSH_ENDPIONT_PUBLIC_URL": "x", "SIMPLEPUSH_CLIENT_HELLO_TIMEOUT": "no"}
        error = self.assertRaises(ConfigError, parse_config, document, environ)
        self.assertEqual(
            error.problems,
            (
                'websockets: unknown section (did you mean "websocket"?)',
                "SIMPLEPUSH_CLIENT_HELLO_TIMEOUT: must be a number, got 'no'",
                'SIMPLEPUSH_ENDPIONT_PUBLIC_URL: unknown section "endpiont" (did you mean'
                ' "endpoint"?); variables are named SIMPLEPUSH_<SECTION>_<KEY>',
                "websocket.backlog: must be > 0, got 0",
                "websocket.port: unknown key",
                "client.retry_interval: must be a number, got 'soon'",
            ),
        )
        self.assertEqual(str(error), "\n".join(error.problems))

    def test_checks_across_keys_only_on_good_keys(self) -> None:
        """A section whose keys are fine but inconsistent reports that, with the rest."""
        document = {
            "storage": {"pool_min_threads": 5, "pool_max_threads": 2},
            "router": {"listen": "tcp:3000", "public_url": "nope"},
            "endpoint": {"max_data": -1},
        }
        error = self.assertRaises(ConfigError, parse_config, document, {})
        self.assertEqual(
            [problem.split(":")[0] for problem in error.problems],
            ["endpoint.max_data", "storage.pool_min_threads", "router.secret", "router.public_url"],
        )

    def test_single_problem_message_unchanged(self) -> None:
        """With one problem, the message is that one line."""
        error = self.assertRaises(ConfigError, parse_config, {"websocket": {"backlog": 0}}, {})
        self.assertEqual(str(error), "websocket.backlog: must be > 0, got 0")


class UnknownVariableTests(SynchronousTestCase):
    """Every ``SIMPLEPUSH_*`` variable must name a known section and key."""

    def problems(self, environ: dict[str, str]) -> tuple[str, ...]:
        return self.assertRaises(ConfigError, parse_config, {}, environ).problems

    def test_unknown_section(self) -> None:
        """A typo in the section is refused, naming the variable and the section."""
        [problem] = self.problems({"SIMPLEPUSH_CLINT_RETRY_INTERVAL": "5"})
        self.assertTrue(
            problem.startswith('SIMPLEPUSH_CLINT_RETRY_INTERVAL: unknown section "clint"')
        )
        self.assertIn('did you mean "client"', problem)

    def test_unknown_section_any_case(self) -> None:
        """The check is case-insensitive, like the overrides themselves."""
        [problem] = self.problems({"simplepush_endpiont_public_url": "https://a"})
        self.assertTrue(
            problem.startswith('simplepush_endpiont_public_url: unknown section "endpiont"')
        )

    def test_no_key(self) -> None:
        """A variable with a section and no key, or nothing after the prefix, is refused."""
        self.assertEqual(
            self.problems({"SIMPLEPUSH_CLIENT": "1", "SIMPLEPUSH_": "1"}),
            (
                'SIMPLEPUSH_: unknown section ""; variables are named SIMPLEPUSH_<SECTION>_<KEY>',
                "SIMPLEPUSH_CLIENT: unknown key client.",
            ),
        )

    def test_unknown_key_suggests(self) -> None:
        """An unknown key of a known section names the key and a close one."""
        [problem] = self.problems({"SIMPLEPUSH_ENDPOINT_PUBLIC_ULR": "https://a"})
        self.assertEqual(
            problem,
            "SIMPLEPUSH_ENDPOINT_PUBLIC_ULR: unknown key endpoint.public_ulr"
            ' (did you mean "public_url"?)',
        )

    def test_every_known_variable_accepted(self) -> None:
        """One variable per key of every section (with its default as text) is accepted."""
        environ = {}
        for section, table in dataclasses.asdict(Config()).items():
            for key, value in table.items():
                text = ",".join(value) if isinstance(value, list) else str(value)
                environ[f"SIMPLEPUSH_{section}_{key}".upper()] = text
        self.assertEqual(parse_config({}, environ), Config())


class UrlTests(SynchronousTestCase):
    """``public_url`` keys are absolute http(s) URLs; ``origins`` are origins."""

    BAD_URLS = (
        "push.example.com",
        "push.example.com:8081",
        "/update",
        "ftp://push.example.com",
        "http://",
        "http://:8081",
        "https://push.example.com/?a=1",
        "https://push.example.com/#top",
        "https://push.example.com?",
        "http://user:pw@push.example.com",
        "http://push.example.com:99999",
        "http://push.example.com:port",
        " https://push.example.com",
        "https://push.example.com/a b",
    )
    GOOD_URLS = (
        "https://push.example.com",
        "http://127.0.0.1:8081",
        "https://push.example.com/prefix/",
        "http://[::1]:8081",
        "HTTPS://Push.Example.com",
    )

    def test_endpoint_public_url_refused(self) -> None:
        """Each malformed ``[endpoint] public_url`` is refused, naming the key and value."""
        for url in self.BAD_URLS:
            error = self.assertRaises(
                ConfigError, parse_config, {"endpoint": {"public_url": url}}, {}
            )
            self.assertEqual(len(error.problems), 1)
            self.assertTrue(error.problems[0].startswith("endpoint.public_url: "), url)
            self.assertIn(repr(url), error.problems[0])

    def test_endpoint_public_url_accepted(self) -> None:
        """Absolute http(s) URLs with a host, with or without a path, are kept as given."""
        for url in self.GOOD_URLS:
            config = parse_config({"endpoint": {"public_url": url}}, {})
            self.assertEqual(config.endpoint.public_url, url)

    def test_endpoint_public_url_from_environment(self) -> None:
        """The variable is checked the same way, naming the key."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_ENDPOINT_PUBLIC_URL": "push.example.com"}
        )
        self.assertEqual(
            str(error),
            "endpoint.public_url: must be an absolute http:// or https:// URL with a host,"
            " got 'push.example.com'",
        )

    def test_router_public_url(self) -> None:
        """With ``router.listen`` set, ``router.public_url`` gets the same checks."""
        router = {"listen": "tcp:3000", "secret": "s" * 16}
        for url in self.BAD_URLS:
            error = self.assertRaises(
                ConfigError, parse_config, {"router": {**router, "public_url": url}}, {}
            )
            self.assertTrue(str(error).startswith("router.public_url: "), url)
        for url in self.GOOD_URLS:
            config = parse_config({"router": {**router, "public_url": url}}, {})
            self.assertEqual(config.router.public_url, url)

    def test_origins_refused(self) -> None:
        """An origin without a scheme, with a path, query or user, or a wildcard is refused."""
        for origin in (
            "example.com",
            "example.com:8080",
            "https://example.com/",
            "https://example.com/app",
            "https://example.com?x=1",
            "https://user@example.com",
            "https://example.com:99999",
            "*",
            "null",
            "",
        ):
            origins = ["https://good.example", origin]
            error = self.assertRaises(
                ConfigError, parse_config, {"websocket": {"origins": origins}}, {}
            )
            self.assertTrue(
                str(error).startswith(f"websocket.origins: {origin!r} is not an origin"), origin
            )

    def test_origins_accepted(self) -> None:
        """``scheme://host[:port]`` origins of any scheme are accepted as given."""
        origins = [
            "https://example.com",
            "http://localhost:8080",
            "app://sms.gaiamobile.org",
            "moz-extension://0a1b2c3d",
            "http://[::1]:3000",
        ]
        config = parse_config({"websocket": {"origins": origins}}, {})
        self.assertEqual(config.websocket.origins, origins)


class SecretTests(SynchronousTestCase):
    """Errors about ``crypto.keys`` and ``router.secret`` never repeat their values."""

    def test_bad_key_named_not_shown(self) -> None:
        """A malformed key is refused at load time by its position, not its text."""
        bad = "not-a-key-but-still-secret"
        document = {"crypto": {"keys": [generate_key(), bad]}}
        error = self.assertRaises(ConfigError, parse_config, document, {})
        self.assertEqual(str(error), "crypto.keys: key 2 of 2: a key is not URL-safe base64")

    def test_short_key(self) -> None:
        """A key of the wrong length names the length."""
        short = generate_key()[:20]
        error = self.assertRaises(ConfigError, parse_config, {}, {"SIMPLEPUSH_CRYPTO_KEYS": short})
        self.assertIn("crypto.keys: key 1 of 1: a key must be 32 bytes", str(error))
        self.assertNotIn(short, str(error))

    def test_wrong_types_not_echoed(self) -> None:
        """A secret of the wrong type is refused without repeating it."""
        document = {"crypto": {"keys": "top-secret-key"}, "router": {"secret": 123456789}}
        error = self.assertRaises(ConfigError, parse_config, document, {})
        self.assertEqual(
            error.problems,
            ("crypto.keys: must be a list of strings", "router.secret: must be a string"),
        )
