"""Tests for the cluster keys of ``pushtwisted.config``: ``[router]`` and ``reuse_port``."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import MIN_ROUTER_SECRET, Config, RouterConfig, parse_config
from pushtwisted.errors import ConfigError

SECRET = "s" * MIN_ROUTER_SECRET
CLUSTER = {
    "listen": "tcp:3000:interface=10.0.0.5",
    "public_url": "http://10.0.0.5:3000",
    "secret": SECRET,
}


class RouterConfigTests(SynchronousTestCase):
    """``[router]``: empty ``listen`` is a single node; a set one needs its companions."""

    def assertConfigError(self, document: dict[str, object], *fragments: str) -> None:
        error = self.assertRaises(ConfigError, parse_config, document, {})
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_defaults(self) -> None:
        """By default a node runs alone: no listen, no URL, no secret; 2 s timeout, 30 s skew."""
        router = Config().router
        self.assertEqual(
            (router.listen, router.public_url, router.secret, router.timeout, router.max_skew),
            ("", "", "", 2.0, 30.0),
        )
        self.assertFalse(router.enabled)

    def test_cluster(self) -> None:
        """``listen`` with ``public_url`` and a long enough ``secret`` makes a cluster node."""
        config = parse_config({"router": {**CLUSTER, "timeout": 1, "max_skew": 5}}, {})
        self.assertTrue(config.router.enabled)
        self.assertEqual(config.router.public_url, "http://10.0.0.5:3000")
        self.assertEqual((config.router.timeout, config.router.max_skew), (1.0, 5.0))

    def test_secret_required(self) -> None:
        """``listen`` without a secret names ``router.secret``."""
        document = {"router": {**CLUSTER, "secret": ""}}
        self.assertConfigError(document, "router.secret", str(MIN_ROUTER_SECRET))

    def test_short_secret(self) -> None:
        """A secret shorter than the minimum names ``router.secret``."""
        document = {"router": {**CLUSTER, "secret": SECRET[1:]}}
        self.assertConfigError(document, "router.secret")

    def test_public_url_required(self) -> None:
        """``listen`` without ``public_url`` names ``router.public_url``."""
        self.assertConfigError({"router": {**CLUSTER, "public_url": ""}}, "router.public_url")

    def test_public_url_must_be_http(self) -> None:
        """``public_url`` must be an http(s) URL with a host."""
        for url in ("10.0.0.5:3000", "ftp://10.0.0.5", "http://", "tcp:3000"):
            self.assertConfigError({"router": {**CLUSTER, "public_url": url}}, "router.public_url")
        https = parse_config({"router": {**CLUSTER, "public_url": "https://node1/"}}, {})
        self.assertEqual(https.router.public_url, "https://node1/")

    def test_no_checks_without_listen(self) -> None:
        """Without ``listen`` the other keys are not checked (a shared file may set them)."""
        config = parse_config({"router": {"secret": "short", "public_url": "x"}}, {})
        self.assertFalse(config.router.enabled)

    def test_timeout_must_be_positive(self) -> None:
        """A timeout of 0 is refused, naming ``router.timeout``."""
        self.assertConfigError({"router": {"timeout": 0}}, "router.timeout", "> 0")

    def test_negative_skew(self) -> None:
        """A negative skew is refused, naming ``router.max_skew``."""
        self.assertConfigError({"router": {"max_skew": -1}}, "router.max_skew", ">= 0")

    def test_unknown_key(self) -> None:
        """An unknown key of ``[router]`` is named."""
        self.assertConfigError({"router": {"peers": []}}, "router.peers", "unknown key")

    def test_direct_construction_checks_too(self) -> None:
        """``RouterConfig(...)`` made in code is checked the same way."""
        self.assertRaises(ConfigError, RouterConfig, listen="tcp:3000")


class RouterEnvironmentTests(SynchronousTestCase):
    """One file serves every node: per-node router keys come from the environment."""

    def test_per_node_values(self) -> None:
        """``SIMPLEPUSH_ROUTER_LISTEN`` and ``SIMPLEPUSH_ROUTER_PUBLIC_URL`` set the node's own
        router listener over a file that holds only the shared secret."""
        environ = {
            "SIMPLEPUSH_ROUTER_LISTEN": "tcp:3001:interface=10.0.0.5",
            "SIMPLEPUSH_ROUTER_PUBLIC_URL": "http://10.0.0.5:3001",
        }
        config = parse_config({"router": {"secret": SECRET}}, environ)
        self.assertEqual(config.router.listen, "tcp:3001:interface=10.0.0.5")
        self.assertEqual(config.router.public_url, "http://10.0.0.5:3001")

    def test_checks_apply_after_environment(self) -> None:
        """A listen set from the environment is checked like one from the file."""
        error = self.assertRaises(
            ConfigError, parse_config, {}, {"SIMPLEPUSH_ROUTER_LISTEN": "tcp:3001"}
        )
        self.assertIn("router.secret", str(error))


class ReusePortConfigTests(SynchronousTestCase):
    """``reuse_port`` on the WebSocket and endpoint listeners."""

    def test_off_by_default(self) -> None:
        """Both listeners hold their port alone by default."""
        config = Config()
        self.assertEqual((config.websocket.reuse_port, config.endpoint.reuse_port), (False, False))

    def test_from_file_and_environment(self) -> None:
        """``reuse_port`` is a boolean, from the file or ``SIMPLEPUSH_*_REUSE_PORT``."""
        config = parse_config(
            {"websocket": {"reuse_port": True}}, {"SIMPLEPUSH_ENDPOINT_REUSE_PORT": "yes"}
        )
        self.assertEqual((config.websocket.reuse_port, config.endpoint.reuse_port), (True, True))

    def test_not_a_boolean(self) -> None:
        """A non-boolean names the key."""
        error = self.assertRaises(ConfigError, parse_config, {"endpoint": {"reuse_port": 1}}, {})
        self.assertIn("endpoint.reuse_port", str(error))
