"""End-to-end: the command lines an operator types, run as real processes.

``twistd simplepush`` with configuration errors at start, and
``[server] log_level`` with twistd's default logger.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.server import (
    ServerProcess,
    run_command,
    toml_document,
    twistd_command,
)

TWISTD = twistd_command("-n", "--pidfile=", "simplepush")


class _CommandTestCase(SynchronousTestCase):
    """Runs commands in a fresh directory with a clean environment."""

    def run_command(
        self, command: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` to its end (bounded) and return its result, as text."""
        return run_command(command, self.directory(), env)

    def directory(self) -> Path:
        """Return a new empty directory for this test."""
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        return path

    def config_file(self, document: Mapping[str, Mapping[str, object]]) -> str:
        """Write ``document`` as a TOML file and return its path."""
        path = self.directory() / "push.toml"
        path.write_text(toml_document(document), encoding="utf-8")
        return str(path)


class StartupErrorTests(_CommandTestCase):
    """``twistd simplepush`` refuses a bad configuration at start: every problem, exit 1."""

    def start(
        self, document: Mapping[str, Mapping[str, object]], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Start the real server with ``document`` (it must exit at once)."""
        return self.run_command([*TWISTD, "--config", self.config_file(document)], env)

    def test_unknown_section_variable(self) -> None:
        """A misspelt section in a variable is one line naming it (it was ignored)."""
        result = self.start({}, {"SIMPLEPUSH_ENDPIONT_PUBLIC_URL": "https://push.example.com"})
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            'error: SIMPLEPUSH_ENDPIONT_PUBLIC_URL: unknown section "endpiont" (did you mean'
            ' "endpoint"?); variables are named SIMPLEPUSH_<SECTION>_<KEY>\n',
        )

    def test_public_url_without_scheme(self) -> None:
        """A ``public_url`` that is not an absolute http(s) URL is one line naming it."""
        result = self.start({"endpoint": {"public_url": "push.example.com"}})
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            "error: endpoint.public_url: must be an absolute http:// or https:// URL with a"
            " host, got 'push.example.com'\n",
        )

    def test_origin_without_scheme(self) -> None:
        """An origin without a scheme, from a variable, is one line naming the key."""
        result = self.start({}, {"SIMPLEPUSH_WEBSOCKET_ORIGINS": "https://a.example,b.example"})
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            "error: websocket.origins: 'b.example' is not an origin: scheme://host[:port],"
            " without a path, got ['https://a.example', 'b.example']\n",
        )

    def test_all_problems_at_once(self) -> None:
        """Several problems are all printed, one line each, in one start."""
        result = self.start(
            {"client": {"max_channels": -1}, "storage": {"backend": "dynamo"}},
            {"SIMPLEPUSH_STORAGE_PORT": "1"},
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.splitlines(),
            [
                "error: SIMPLEPUSH_STORAGE_PORT: unknown key storage.port",
                "error: client.max_channels: must be >= 0, got -1",
                "error: storage.backend: must be one of: memory, sqlite, memcached, got 'dynamo'",
            ],
        )


class LoggingTests(SynchronousTestCase):
    """Log levels and formats of a real running server."""

    def run_server(self, level: str) -> str:
        """Start and stop a server at ``level``; return everything it printed."""
        server = ServerProcess(
            self, {"server": {"log_level": level}, "storage": {"backend": "memory"}}
        )
        server.start()
        self.assertEqual(server.stop(signal.SIGTERM), 0, server.log)
        return server.log

    def test_level_applies_to_twistd_default_logger(self) -> None:
        """At ``error``, twistd's own text logger shows none of the info lines of
        Twisted, Autobahn or pushtwisted that it shows at ``info``."""
        info = self.run_server("info")
        for fragment in ("twistd ", "starting up", "Site starting on"):
            self.assertIn(fragment, info)
        self.assertEqual(self.run_server("error"), "")
