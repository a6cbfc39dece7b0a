"""The command line: ``python -m pushtwisted`` and the checks it shares with twistd.

::

    python -m pushtwisted [--config FILE] [--logger NAME | --log-format json]
    python -m pushtwisted check [--config FILE]
    python -m pushtwisted sample-config
    python -m pushtwisted --version

The first runs the server in the foreground, as ``twistd --nodaemon
--pidfile= simplepush`` does, without the plugin lookup (so it also works
from an editable install).  ``check`` (``twistd simplepush --check-config``)
validates the configuration and prints the effective one as TOML, secrets
masked, then exits 0; with problems it prints every one, one ``error:`` line
each, and exits 1.  ``sample-config`` prints the ``config.sample.toml``
shipped inside the package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from types import TracebackType
from typing import IO, Any

from twisted.application.service import ServiceMaker
from twisted.logger import Logger
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions, runApp  # type: ignore[attr-defined]

from pushtwisted import __version__
from pushtwisted.config import ENV_PREFIX, Config
from pushtwisted.config_toml import effective_toml
from pushtwisted.errors import ConfigError
from pushtwisted.logs import logger

__all__ = [
    "LOG_FORMATS",
    "MainOptions",
    "VersionedOptions",
    "check_report",
    "error_exit",
    "main",
    "report_config_errors",
    "sample_config",
    "version_line",
]

#: ``--log-format`` choices and the observer factory each one names.
LOG_FORMATS = {
    "text": "pushtwisted.logs.text_observer",
    "json": "pushtwisted.logs.json_observer",
}

_PROGRAM = "python -m pushtwisted"
_log = Logger(namespace=__name__, observer=logger().observer)
_CONFIG_OPTION = ["config", "c", None, "TOML configuration file (default: built-in defaults)."]

_MAKER = ServiceMaker(  # type: ignore[no-untyped-call]
    "pushtwisted",
    "pushtwisted.tap",
    "A SimplePush server: WebSocket user agents, HTTP notification endpoints",
    "simplepush",
)


def version_line() -> str:
    """Return what ``--version`` prints: ``pushtwisted <version>``."""
    return f"pushtwisted {__version__}"


def error_exit(error: ConfigError) -> SystemExit:
    """Return the exit for ``error``: every problem on stderr as ``error: ...``, status 1."""
    return SystemExit(_error_lines(error))


def _error_lines(error: ConfigError) -> str:
    return "\n".join(f"error: {problem}" for problem in error.problems)


def report_config_errors() -> None:
    """Print a ``ConfigError`` that ends the process as ``error:`` lines, not a traceback.

    Installs a ``sys.excepthook`` (once) that writes such an error, one line
    per problem, to the process's own stderr and lets the process exit with
    status 1; other exceptions go to the previous hook.  This covers what is
    only found once twistd starts the service (a listener that cannot bind):
    the error passes through twistd (which removes its pid file and, when it
    daemonized, reports it to the waiting parent), and by then logging has
    taken over ``sys.stderr``.  A daemon's stderr is ``/dev/null``: there the
    lines are logged (critical) instead, so that the log file has them.
    """
    previous = sys.excepthook
    if getattr(previous, "_pushtwisted", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(value, ConfigError):
            previous(kind, value, tb)
            return
        stream = sys.__stderr__ or sys.stderr
        if _goes_nowhere(stream):
            _log.critical("{errors}", errors=_error_lines(value))
            return
        stream.write(_error_lines(value) + "\n")
        stream.flush()

    hook._pushtwisted = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def check_report(config: Config, path: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Return what ``check`` prints for a valid ``config``: its sources, then its TOML.

    :param path: the configuration file read, if any.
    :param environ: the environment the overrides came from (default: ours).
    """
    environ = os.environ if environ is None else environ
    variables = sorted(name for name in environ if name.upper().startswith(ENV_PREFIX))
    sources = ["built-in defaults"]
    if path is not None:
        sources.append(path)
    if variables:
        sources.append(", ".join(variables))
    return (
        f"# {version_line()}: the configuration is valid.\n"
        f"# Effective configuration: {', then '.join(sources)}; secrets are masked.\n"
        + effective_toml(config)
    )


def sample_config() -> str:
    """Return the text of the ``config.sample.toml`` shipped inside the package."""
    return resources.files("pushtwisted").joinpath("config.sample.toml").read_text("utf-8")


def _goes_nowhere(stream: IO[str]) -> bool:
    """Return True when ``stream`` writes to ``/dev/null`` (a daemon's stderr)."""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


class VersionedOptions(usage.Options):
    """``usage.Options`` whose ``--version`` prints pushtwisted's version, not Twisted's."""

    def opt_version(self) -> None:
        """Print pushtwisted's version and exit."""
        print(version_line())
        raise SystemExit(0)


class _Command(VersionedOptions):
    """The options of a command of ``python -m pushtwisted``."""

    synopsis = ""

    def getSynopsis(self) -> str:
        """Return the synopsis alone (not appended to the main one)."""
        return self.synopsis


class _CheckOptions(_Command):
    """``python -m pushtwisted check [--config FILE]``."""

    synopsis = f"Usage: {_PROGRAM} check [--config FILE]"
    longdesc = (
        "Validate the configuration (the file, then SIMPLEPUSH_<SECTION>_<KEY> variables) "
        "and print the effective one as TOML, secrets masked; exit 0. With problems, "
        "print every one as an 'error:' line and exit 1. Nothing is started or written."
    )
    optParameters = [_CONFIG_OPTION]


class _SampleOptions(_Command):
    """``python -m pushtwisted sample-config``."""

    synopsis = f"Usage: {_PROGRAM} sample-config"
    longdesc = (
        "Print the sample configuration shipped with this package: every key, its "
        "default and what it does. Redirect it to a file to start your own."
    )


class MainOptions(VersionedOptions):
    """Command line of ``python -m pushtwisted``."""

    synopsis = f"Usage: {_PROGRAM} [options] [check | sample-config]"
    longdesc = (
        "Run a SimplePush server in the foreground, as 'twistd -n --pidfile= simplepush' "
        "does: a WebSocket listener for user agents and an HTTP listener where application "
        "servers PUT notifications to /update/<token>. Without --config the built-in "
        "defaults are used (see 'sample-config'). Environment variables "
        "SIMPLEPUSH_<SECTION>_<KEY> (for example SIMPLEPUSH_WEBSOCKET_LISTEN=tcp:8080) "
        "override the file."
    )
    optFlags = [
        ["check-config", None, "Validate the configuration, print it and exit (as 'check')."],
    ]
    optParameters = [
        _CONFIG_OPTION,
        ["logger", None, None, "Log observer factory, as for twistd --logger."],
        ["log-format", None, None, "text or json: shorthand for a pushtwisted --logger."],
    ]
    subCommands = [
        ["check", None, _CheckOptions, "Validate the configuration, print it and exit."],
        ["sample-config", None, _SampleOptions, "Print the annotated sample configuration."],
    ]

    def postOptions(self) -> None:
        """Check ``--log-format`` and that it is not given with ``--logger``."""
        log_format = self["log-format"]
        if log_format is not None:
            if log_format not in LOG_FORMATS:
                raise usage.UsageError(f"--log-format must be one of: {', '.join(LOG_FORMATS)}")
            if self["logger"] is not None:
                raise usage.UsageError("give --logger or --log-format, not both")

    def twistd_arguments(self) -> list[str]:
        """Return the twistd command line (without ``twistd``) that runs or checks."""
        config = self["config"]
        check = self["check-config"] or self.subCommand == "check"
        if self.subCommand == "check" and self.subOptions["config"] is not None:
            config = self.subOptions["config"]
        logger = self["logger"] or LOG_FORMATS.get(self["log-format"] or "")
        arguments = ["--nodaemon", "--pidfile="]
        if logger:
            arguments.append(f"--logger={logger}")
        arguments.append(_MAKER.tapname)
        if config is not None:
            arguments.extend(["--config", config])
        if check:
            arguments.append("--check-config")
        return arguments


class _ServerOptions(ServerOptions):
    """twistd's options with ``simplepush`` as the only subcommand."""

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        self.loadedPlugins = {_MAKER.tapname: _MAKER}
        yield (_MAKER.tapname, None, lambda: _MAKER.options(), _MAKER.description)


def _usage_exit(error: usage.UsageError) -> SystemExit:
    print(f"{_PROGRAM}: {error}", file=sys.stderr)
    print(f"Try '{_PROGRAM} --help'.", file=sys.stderr)
    return SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run, check or print (see the module)."""
    options = MainOptions()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        raise _usage_exit(e) from None
    if options.subCommand == "sample-config":
        sys.stdout.write(sample_config())
        return
    config = _ServerOptions()  # type: ignore[no-untyped-call]
    try:
        config.parseOptions(options.twistd_arguments())  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        raise _usage_exit(e) from None
    runApp(config)  # type: ignore[no-untyped-call]
