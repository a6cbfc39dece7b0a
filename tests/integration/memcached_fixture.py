"""Real memcached servers for integration tests.

``shared_memcached()`` answers the address of the memcached the whole run
shares: ``$PUSHTWISTED_TEST_MEMCACHED`` (host:port, as ``.ci/run`` sets it)
or else one started from ``/usr/bin/memcached`` on a free loopback port and
stopped when the run ends.  ``MemcachedProcess`` starts a private one that a
test may stop and restart.  Without memcached the tests are skipped, except
under ``CI=true``, where a missing memcached is a failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

__all__ = ["ENV_VAR", "MemcachedProcess", "free_port", "require", "shared_memcached"]

ENV_VAR = "PUSHTWISTED_TEST_MEMCACHED"


def _binary() -> str | None:
    for candidate in ("/usr/bin/memcached", shutil.which("memcached")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require(reason: str) -> None:
    """Skip the test for ``reason``; under ``CI=true`` fail instead."""
    if os.environ.get("CI") == "true":
        raise AssertionError(f"CI=true and memcached is needed: {reason}")
    raise SkipTest(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _answering_pid(host: str, port: int) -> int | None:
    """The pid a memcached on ``host:port`` reports in ``stats``, or None."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    for line in data.split(b"\r\n"):
        if line.startswith(b"STAT pid "):
            return int(line.split()[2])
    return None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class MemcachedProcess:
    """A memcached child process on a fixed loopback port.

    :param warm_restart: keep items in a memory file (``-e``) so that a
        ``stop(graceful=True)`` followed by ``start()`` restores them.
    """

    def __init__(self, port: int | None = None, *, warm_restart: bool = False) -> None:
        binary = _binary()
        if binary is None:
            require("no memcached binary (apt-get install memcached)")
            raise AssertionError("unreachable")
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.memory_file: str | None = None
        if warm_restart:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            self.memory_file = os.path.join(base, f"pushtwisted-test-mc-{os.getpid()}-{self.port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        command = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses root without -u
        if self.memory_file:
            command += ["-e", self.memory_file]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        # Another process on a shared machine may have taken the port after
        # free_port() saw it free: then something listens there, but not the
        # memcached we started (it exits, unable to bind).  Wait until the pid
        # that answers ``stats`` is our child's.
        while _answering_pid("127.0.0.1", self.port) != self.process.pid:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"memcached did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self, *, graceful: bool = False) -> None:
        """Stop the server: SIGKILL, or SIGUSR1 (saves items for a warm restart)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGUSR1 if graceful else signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def cleanup(self) -> None:
        """Stop the server and remove its memory files."""
        self.stop()
        if self.memory_file:
            for path in (self.memory_file, self.memory_file + ".meta"):
                if os.path.exists(path):
                    os.unlink(path)


_shared: MemcachedProcess | None = None


def shared_memcached() -> str:
    """Return ``host:port`` of the run's shared memcached (see the module doc)."""
    global _shared
    configured = os.environ.get(ENV_VAR)
    if configured:
        if not _listening(*_split(configured)):
            raise AssertionError(f"{ENV_VAR}={configured} does not accept connections")
        return configured
    if _shared is None:
        process = MemcachedProcess()
        process.start()
        atexit.register(process.cleanup)
        _shared = process
    return _shared.address
