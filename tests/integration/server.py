"""Run the real server in a subprocess for end-to-end tests.

``ServerProcess`` starts ``twistd -n --pidfile= simplepush --config <file>``
as a separate process on free loopback ports, with its own state directory,
and always cleans it up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted.config_toml import dumps

__all__ = [
    "ServerProcess",
    "child_env",
    "free_ports",
    "run_command",
    "toml_document",
    "twistd_command",
]

# The directory that holds the ``pushtwisted`` package the tests import (the
# repository root, or site-packages).  It also holds ``twisted/plugins``, so
# putting it on the child's PYTHONPATH lets twistd find ``simplepush`` even
# from an editable install, and the child runs the same code as the tests.
CODE_ROOT = Path(pushtwisted.__file__).resolve().parent.parent


#: Every port ``free_ports`` has returned in this run, so that servers
#: prepared one after the other (and not started yet) never share a port.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    A port is never returned twice in one test run (the kernel may hand the
    same free port to two calls made before either server binds it).
    """
    sockets = []
    ports: list[int] = []
    try:
        with _handed_out_lock:
            for _ in range(count * 50):
                if len(ports) == count:
                    break
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)  # held until the end: no duplicates within the call
                s.bind(("127.0.0.1", 0))
                port: int = s.getsockname()[1]
                if port not in _handed_out:
                    ports.append(port)
            if len(ports) < count:
                raise RuntimeError(f"could not find {count} unused free ports")
            _handed_out.update(ports)
        return ports
    finally:
        for s in sockets:
            s.close()


def twistd_command(*args: str) -> list[str]:
    """Return the command line of ``twistd ARGS`` for the running interpreter."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment for a child server: no ``SIMPLEPUSH_*`` leaks in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIMPLEPUSH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_command(
    command: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``cwd`` to its end (at most 60 s) with ``child_env(env)``.

    :returns: the result, with stdout and stderr as text.
    """
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def toml_document(sections: Mapping[str, Mapping[str, object]]) -> str:
    """Return TOML text for ``{section: {key: value}}`` (scalars and lists only)."""
    return dumps(sections)


class ServerProcess:
    """A real pushtwisted server, run as ``twistd -n simplepush`` in a subprocess.

    The constructor only prepares: it picks two free loopback ports (WebSocket
    and endpoint), makes a temporary directory under the test's ``mktemp()``
    with ``state/`` (``storage.path``), ``server.toml`` and ``server.log``
    (stdout and stderr of every run, appended), and registers a cleanup that
    kills a process still running.  ``start()`` writes the TOML from
    ``self.config`` and waits (bounded) until its ports accept connections;
    it fails the test with the log when the server exits or is not ready in
    time.  ``stop()`` sends a signal and waits (bounded) for the exit.

    ``start()`` may be called again after ``stop()``: the ports, the state
    directory (so the generated token key) and the log are kept, so restart
    tests see the same ``ws_url``, ``endpoint_url`` and stored data.  Change
    ``self.config`` in between to restart with other settings::

        server = ServerProcess(self, {"client": {"retry_interval": 1}})
        server.start()
        ...                                  # talk to server.ws_url / endpoint_url
        self.assertEqual(server.stop(), -signal.SIGTERM)
        server.config["storage"]["backend"] = "sqlite"
        server.start()

    :param testcase: the trial test case (for ``mktemp``, ``addCleanup``, ``fail``).
    :param config: extra ``{section: {key: value}}`` merged over the generated
        sections (listeners, ``endpoint.public_url``, ``storage.path``), so a
        test can choose backends and timers.
    :param env: extra environment variables for the child (``SIMPLEPUSH_*`` of
        the test runner's own environment are not passed on).
    :param start_timeout: seconds ``start()`` waits for both ports.
    :param command: the command that runs the server, without ``--config
        FILE`` (added at the end); by default ``twistd -n --pidfile= simplepush``.
    :param extra_ports: how many more free loopback ports to pick, with the
        other two (so all are distinct), as ``self.extra_ports``: for more
        listeners in ``self.config`` (a cluster node's ``[router] listen``).
        ``start()`` waits until they accept connections too.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        config: Mapping[str, Mapping[str, object]] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        extra_ports: int = 0,
        command: Sequence[str] | None = None,
    ) -> None:
        self._testcase = testcase
        self.directory = Path(testcase.mktemp()).resolve()
        self.state_dir = self.directory / "state"
        self.config_path = self.directory / "server.toml"
        self.log_path = self.directory / "server.log"
        self.state_dir.mkdir(parents=True)
        self.ws_port, self.endpoint_port, *self.extra_ports = free_ports(2 + extra_ports)
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/"
        self.endpoint_url = f"http://127.0.0.1:{self.endpoint_port}"
        self.config: dict[str, dict[str, object]] = {
            "websocket": {"listen": f"tcp:{self.ws_port}:interface=127.0.0.1"},
            "endpoint": {
                "listen": f"tcp:{self.endpoint_port}:interface=127.0.0.1",
                "public_url": self.endpoint_url,
            },
            "storage": {"path": str(self.state_dir)},
        }
        for section, table in (config or {}).items():
            self.config.setdefault(section, {}).update(table)
        self.env = child_env(env)
        self.start_timeout = start_timeout
        self.command = list(command or twistd_command("-n", "--pidfile=", "simplepush"))
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        testcase.addCleanup(self._cleanup)

    @property
    def log(self) -> str:
        """Return everything the server printed so far (all runs)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start the server and return once both ports accept connections."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        self.config_path.write_text(toml_document(self.config), encoding="utf-8")
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*self.command, "--config", str(self.config_path)],
            cwd=self.directory,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        waiting = [self.ws_port, self.endpoint_port, *self.extra_ports]
        while waiting:
            if self.process.poll() is not None:
                self._testcase.fail(
                    f"server exited with status {self.process.returncode} while starting:\n"
                    + self.log
                )
            if time.monotonic() > deadline:
                self._kill()
                self._testcase.fail(
                    f"server not listening on {waiting} after {self.start_timeout}s:\n" + self.log
                )
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
            else:
                waiting.pop(0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and return the exit status (negative: killed by that signal).

        Fails the test, with the log, when the server has not exited after
        ``timeout`` seconds (it is then killed).
        """
        process = self.process
        if process is None:
            raise RuntimeError("the server was not started")
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                self._testcase.fail(
                    f"server still running {timeout}s after signal {sig}:\n{self.log}"
                )
        self._close_log()
        return process.returncode

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._kill()
