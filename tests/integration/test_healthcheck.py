"""End-to-end: the Dockerfile's ``HEALTHCHECK`` command against a real server.

Docker is not needed: the test runs the command's Python snippet, as written
in the Dockerfile, with the port of the server under test in place of 8081.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.server import ServerProcess, free_ports
from tests.test_packaging import healthcheck_command

_IMAGE_ADDRESS = "127.0.0.1:8081"


class HealthcheckTests(SynchronousTestCase):
    """The snippet exits 0 while ``/health`` answers 200 and 1 otherwise."""

    def check(self, server: ServerProcess) -> subprocess.CompletedProcess[str]:
        """Run the Dockerfile's health check against ``server``'s endpoint listener."""
        python, flag, snippet = healthcheck_command()
        self.assertEqual(snippet.count(_IMAGE_ADDRESS), 1)
        snippet = snippet.replace(_IMAGE_ADDRESS, f"127.0.0.1:{server.endpoint_port}")
        return subprocess.run(
            [sys.executable, flag, snippet],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def test_healthy_then_stopped(self) -> None:
        """Exit 0 with nothing printed while the server runs; 1 once it is gone."""
        server = ServerProcess(self, {"storage": {"backend": "memory"}})
        server.start()
        healthy = self.check(server)
        self.assertEqual((healthy.returncode, healthy.stdout, healthy.stderr), (0, "", ""))
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        gone = self.check(server)
        self.assertEqual(gone.returncode, 1)
        self.assertTrue(gone.stderr.startswith("unhealthy: "), gone.stderr)

    def test_storage_unavailable(self) -> None:
        """A server whose storage does not answer (/health 503) is unhealthy."""
        [dead] = free_ports(1)
        server = ServerProcess(
            self,
            {
                "storage": {
                    "backend": "memcached",
                    "servers": [f"127.0.0.1:{dead}"],
                    "connect_timeout": 0.5,
                    "timeout": 0.5,
                }
            },
        )
        server.start()
        result = self.check(server)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "unhealthy: HTTP Error 503: Service Unavailable\n")
