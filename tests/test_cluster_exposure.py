"""Tests for ``pushtwisted.cluster.exposure``: which listeners other hosts may reach."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.exposure import public_exposure


class PublicExposureTests(SynchronousTestCase):
    """``public_exposure`` reads the bound address of an endpoint description."""

    def test_private_and_loopback_fine(self) -> None:
        """Loopback, RFC 1918, unique-local, link-local and UNIX sockets give no warning."""
        for description in (
            "tcp:3000:interface=127.0.0.1",
            "tcp:port=3000:interface=10.0.0.5",
            "TCP:3000:interface=192.168.1.2:backlog=50",
            "tcp:3000:interface=172.16.0.1",
            "ssl:3000:privateKey=key.pem:certKey=cert.pem:interface=10.1.2.3",
            r"tcp6:3000:interface=\:\:1",
            r"tcp6:3000:interface=fd00\:\:5",
            r"tcp6:3000:interface=fe80\:\:1%eth0",
            r"tcp6:3000:interface=\:\:ffff\:10.0.0.1",
            "tcp:3000:interface=169.254.0.9",
            "reuseport:3000:interface=10.0.0.7",
            "unix:/run/pushtwisted/router.sock",
        ):
            self.assertIsNone(public_exposure(description), description)

    def test_every_interface(self) -> None:
        """No interface, 0.0.0.0 or :: listens everywhere: a warning says so."""
        for description in ("tcp:3000", "tcp6:3000", "ssl:3000:privateKey=k.pem", "reuseport:3000"):
            reason = public_exposure(description)
            self.assertIn("no interface given", str(reason), description)
        for description in ("tcp:3000:interface=0.0.0.0", r"tcp6:3000:interface=\:\:"):
            self.assertIn("every address", str(public_exposure(description)), description)

    def test_public_address(self) -> None:
        """A public (or shared, CGNAT) address gets a warning naming it."""
        for address in ("8.8.8.8", "100.64.0.1", r"2a00\:1450\:\:1"):
            reason = public_exposure(f"tcp:3000:interface={address}")
            self.assertIn("not a private or loopback address", str(reason), address)

    def test_unreadable(self) -> None:
        """A host name or an endpoint type without a readable address gets a warning."""
        self.assertIn("not an IP address", str(public_exposure("tcp:3000:interface=localhost")))
        self.assertIn("'systemd'", str(public_exposure("systemd:domain=INET:index=0")))
