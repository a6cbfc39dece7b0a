"""End-to-end: the command lines an operator types, run as real processes.

``python -m pushtwisted`` (run, ``check``, ``sample-config``, ``--version``,
``--help``, ``--log-format``) and ``twistd simplepush`` (``--check-config``,
``--version``, configuration errors at start, a state directory that cannot
be used, listeners that cannot bind,
``[server] log_level`` with twistd's default logger).
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted.config import parse_config
from pushtwisted.config_toml import config_document
from pushtwisted.tokens import generate_key
from tests.integration.server import (
    CODE_ROOT,
    ServerProcess,
    child_env,
    run_command,
    toml_document,
    twistd_command,
)

MODULE = [sys.executable, "-m", "pushtwisted"]
TWISTD = twistd_command("-n", "--pidfile=", "simplepush")
SAMPLE = Path(__file__).resolve().parent.parent.parent / "config.sample.toml"


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


class CheckTests(_CommandTestCase):
    """``check`` and ``--check-config`` validate, print the configuration and exit."""

    def test_prints_effective_configuration(self) -> None:
        """Exit 0 with the file and variables applied, secrets masked, nothing written."""
        state = self.directory() / "state"
        document = {
            "endpoint": {"public_url": "https://push.example.com"},
            "storage": {"path": str(state)},
        }
        key = generate_key()
        env = {"SIMPLEPUSH_CRYPTO_KEYS": key, "SIMPLEPUSH_CLIENT_MAX_CHANNELS": "9"}
        path = self.config_file(document)
        result = self.run_command([*MODULE, "check", "--config", path], env)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        expected = parse_config(document, env)
        self.assertEqual(tomllib.loads(result.stdout), config_document(expected))
        self.assertEqual(tomllib.loads(result.stdout)["client"]["max_channels"], 9)
        self.assertNotIn(key, result.stdout)
        self.assertFalse(state.exists())

        twistd = self.run_command([*TWISTD, "--config", path, "--check-config"], env)
        self.assertEqual((twistd.returncode, twistd.stderr), (0, ""))
        self.assertEqual(twistd.stdout, result.stdout)

    def test_every_problem_at_once(self) -> None:
        """Exit 1 with one ``error:`` line per problem and nothing on stdout."""
        path = self.config_file(
            {"websocket": {"backlog": 0, "origins": ["example.com"]}, "endpoint": {"cors": 1}}
        )
        result = self.run_command(
            [*MODULE, "check", "--config", path], {"SIMPLEPUSH_CLINT_HELLO_TIMEOUT": "5"}
        )
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(
            result.stderr.splitlines(),
            [
                'error: SIMPLEPUSH_CLINT_HELLO_TIMEOUT: unknown section "clint" (did you mean'
                ' "client"?); variables are named SIMPLEPUSH_<SECTION>_<KEY>',
                "error: websocket.backlog: must be > 0, got 0",
                "error: websocket.origins: 'example.com' is not an origin:"
                " scheme://host[:port], without a path, got ['example.com']",
                "error: endpoint.cors: must be a boolean, got 1",
            ],
        )

    def test_cluster_checks_included(self) -> None:
        """The checks across sections that start-up makes are made too."""
        path = self.config_file(
            {
                "router": {
                    "listen": "tcp:3000:interface=127.0.0.1",
                    "public_url": "http://127.0.0.1:3000",
                    "secret": "s" * 32,
                },
                "storage": {"backend": "memory"},
            }
        )
        result = self.run_command([*TWISTD, "--config", path, "--check-config"])
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            'error: router.listen: a cluster needs storage.backend = "memcached" (shared by'
            " every node), got 'memory'\n",
        )


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


class StateDirectoryErrorTests(_CommandTestCase):
    """A state directory that cannot be used stops the start with one line and status 1."""

    def start(self, path: str | Path) -> subprocess.CompletedProcess[str]:
        """Start ``twistd -n simplepush`` with ``[storage] path`` set to ``path``."""
        document = {"storage": {"path": str(path)}}
        return self.run_command([*TWISTD, "--config", self.config_file(document)])

    def assertOneLine(self, result: subprocess.CompletedProcess[str], line: str) -> None:
        """Exit 1 and exactly ``line`` on stderr, nothing else."""
        self.assertEqual((result.returncode, result.stdout, result.stderr), (1, "", line + "\n"))

    def test_cannot_be_created(self) -> None:
        """``/proc/nope``: the key, the OS error."""
        self.assertOneLine(
            self.start("/proc/nope"),
            "error: storage.path: cannot create the state directory /proc/nope: no such file"
            " or directory",
        )

    def test_file_instead_of_directory(self) -> None:
        """A file where the directory is expected."""
        file = self.directory() / "state"
        file.write_text("not a directory", encoding="ascii")
        self.assertOneLine(self.start(file), f"error: storage.path: {file} is not a directory")

    def test_cannot_be_written(self) -> None:
        """A directory this user cannot write in (as a root-owned volume would be)."""
        result = self.start("/sys")
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertTrue(
            result.stderr.startswith(
                "error: storage.path: cannot write in the state directory /sys: "
            ),
            result.stderr,
        )
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

    def test_corrupt_endpoint_key(self) -> None:
        """A corrupt ``endpoint.key`` is named (it was reported as ``crypto.keys``)."""
        state = self.directory()
        (state / "endpoint.key").write_text("garbage\n", encoding="ascii")
        self.assertOneLine(
            self.start(state),
            f"error: storage.path: the endpoint key file {state / 'endpoint.key'} is corrupt"
            " (a key is not URL-safe base64): restore it, or delete it to have a new key"
            " generated (every pushEndpoint handed out with the old key then stops working)",
        )

    def test_corrupt_database(self) -> None:
        """A SQLite file that is not a database is named (the server used to run on)."""
        state = self.directory()
        database = state / "pushtwisted.sqlite3"
        database.write_bytes(b"this is not sqlite" * 100)
        self.assertOneLine(
            self.start(state),
            f"error: storage.path: cannot open the database {database}: file is not a database",
        )


class ListenErrorTests(_CommandTestCase):
    """A listener that cannot bind stops the start with one line and status 1."""

    def start_all(
        self, listen: str, env: Mapping[str, str] | None = None
    ) -> list[subprocess.CompletedProcess[str]]:
        """Start ``twistd -n simplepush`` and ``python -m pushtwisted`` with the
        WebSocket listener on ``listen`` (memory storage: nothing else to set up)."""
        document = {"websocket": {"listen": listen}, "storage": {"backend": "memory"}}
        path = self.config_file(document)
        return [self.run_command([*command, "--config", path], env) for command in (TWISTD, MODULE)]

    def assertOneLine(self, result: subprocess.CompletedProcess[str], line: str) -> None:
        """Exit 1, exactly ``line`` on stderr, and no traceback anywhere."""
        self.assertEqual((result.returncode, result.stderr), (1, line + "\n"), result.stdout)
        self.assertNotIn("Traceback", result.stdout)

    def test_port_in_use(self) -> None:
        """The port is taken by another socket: the address and the reason."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        for result in self.start_all(f"tcp:{port}:interface=127.0.0.1"):
            self.assertOneLine(
                result,
                f"error: websocket.listen: cannot listen on 127.0.0.1:{port}:"
                " address already in use",
            )

    def test_port_out_of_range(self) -> None:
        """Port 99999 is refused as a description, before anything listens."""
        for result in self.start_all("tcp:99999:interface=127.0.0.1"):
            self.assertOneLine(
                result,
                "error: websocket.listen: invalid endpoint description"
                " 'tcp:99999:interface=127.0.0.1': port must be 0-65535, got 99999",
            )

    def test_address_not_on_this_host(self) -> None:
        """An interface address this host does not have (TEST-NET-1) is said so."""
        for result in self.start_all("tcp:0:interface=192.0.2.1"):
            self.assertOneLine(
                result,
                "error: websocket.listen: cannot listen on 192.0.2.1:0:"
                " this host has no such address",
            )


class VersionAndHelpTests(_CommandTestCase):
    """``--version``, ``--help`` and ``sample-config`` print and exit 0."""

    def test_version(self) -> None:
        """Both commands print pushtwisted's version, not Twisted's."""
        expected = f"pushtwisted {pushtwisted.__version__}\n"
        for command in ([*MODULE, "--version"], twistd_command("simplepush", "--version")):
            result = self.run_command(command)
            self.assertEqual((result.returncode, result.stdout, result.stderr), (0, expected, ""))

    def test_module_help_names_itself(self) -> None:
        """``python -m pushtwisted --help`` names itself and its commands, not twistd."""
        result = self.run_command([*MODULE, "--help"])
        self.assertEqual(result.returncode, 0)
        self.assertTrue(result.stdout.startswith("Usage: python -m pushtwisted "), result.stdout)
        self.assertNotIn("twistd [options]", result.stdout)
        self.assertIn("sample-config", result.stdout)

    def test_sample_config(self) -> None:
        """``sample-config`` prints the shipped sample, byte for byte."""
        result = subprocess.run(
            [*MODULE, "sample-config"],
            cwd=self.directory(),
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, SAMPLE.read_bytes())


class LoggingTests(SynchronousTestCase):
    """Log levels and formats of a real running server."""

    def run_server(self, level: str, command: list[str] | None = None) -> str:
        """Start and stop a server at ``level``; return everything it printed."""
        server = ServerProcess(
            self,
            {"server": {"log_level": level}, "storage": {"backend": "memory"}},
            command=command,
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

    def test_summary_line_without_noise(self) -> None:
        """At ``info`` the start is summed up in one line (with the state directory's
        absolute path); no "Starting factory <...>" nor "autobahn tuning applied" lines."""
        server = ServerProcess(self)
        server.start()
        self.assertEqual(server.stop(signal.SIGTERM), 0, server.log)
        lines = server.log.splitlines()
        [summary] = [line for line in lines if "started: sqlite storage" in line]
        self.assertIn(f"pushtwisted {pushtwisted.__version__} started", summary)
        self.assertIn(
            f"sqlite storage {server.state_dir / 'pushtwisted.sqlite3'}; websocket on"
            f" 127.0.0.1:{server.ws_port}, endpoint on 127.0.0.1:{server.endpoint_port};"
            f" public_url {server.endpoint_url}; endpoint key generated in"
            f" {server.state_dir / 'endpoint.key'}",
            summary,
        )
        self.assertTrue(any("a new endpoint key was generated" in line for line in lines))
        for noise in ("Starting factory", "Stopping factory", "autobahn tuning applied"):
            self.assertNotIn(noise, server.log)

    def test_no_line_lost_at_sigterm(self) -> None:
        """Lines are buffered per reactor turn, yet every access line of the requests
        answered before SIGTERM is written, and the lines of the shutdown too: with
        twistd's default logger, ``text_observer`` and ``json_observer``."""
        for option in (
            [],
            ["--logger=pushtwisted.logs.text_observer"],
            ["--logger=pushtwisted.logs.json_observer"],
        ):
            command = twistd_command("-n", "--pidfile=", *option, "simplepush")
            server = ServerProcess(self, {"storage": {"backend": "memory"}}, command=command)
            server.start()
            connection = http.client.HTTPConnection("127.0.0.1", server.endpoint_port, timeout=10)
            for _ in range(300):
                connection.request("PUT", "/update/not-a-token", body=b"version=1")
                response = connection.getresponse()
                response.read()
                self.assertEqual(response.status, 404)
            connection.close()
            self.assertEqual(server.stop(signal.SIGTERM), 0, server.log)
            log = server.log
            self.assertEqual(log.count("PUT /update/ 404 in "), 300, (option, log[-2000:]))
            self.assertIn("Server Shut Down.", log.splitlines()[-1], option)

    def test_module_logs_json(self) -> None:
        """``python -m pushtwisted --log-format json`` (or ``--logger``) writes JSON lines."""
        for option in (["--log-format", "json"], ["--logger", "pushtwisted.logs.json_observer"]):
            log = self.run_server("info", [*MODULE, *option])
            records = [json.loads(line) for line in log.splitlines()]
            self.assertTrue(records, log)
            self.assertIn("starting up", " ".join(r["message"] for r in records))
            self.assertEqual({r["level"] for r in records} - {"info", "warn"}, set())


class ModuleRunsTheTreeTests(SynchronousTestCase):
    """The child processes run the code under test."""

    def test_code_root(self) -> None:
        """``CODE_ROOT`` holds the imported package (children get it on PYTHONPATH)."""
        self.assertEqual(Path(pushtwisted.__file__).resolve().parent.parent, CODE_ROOT)
