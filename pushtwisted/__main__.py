"""``python -m pushtwisted [--config FILE]``: run the server in the foreground.

The same as ``twistd --nodaemon --pidfile= simplepush [--config FILE]``, but
without the plugin lookup, so it also works from an editable install.
``python -m pushtwisted --help`` lists the options.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.application.service import ServiceMaker
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions, runApp  # type: ignore[attr-defined]

__all__ = ["main"]

_MAKER = ServiceMaker(  # type: ignore[no-untyped-call]
    "pushtwisted",
    "pushtwisted.tap",
    "A SimplePush server: WebSocket user agents, HTTP notification endpoints",
    "simplepush",
)


class _ServerOptions(ServerOptions):
    """twistd's options with ``simplepush`` as the only subcommand."""

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        self.loadedPlugins = {_MAKER.tapname: _MAKER}
        yield (_MAKER.tapname, None, lambda: _MAKER.options(), _MAKER.description)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) as simplepush options and run the server."""
    args = list(sys.argv[1:] if argv is None else argv)
    config = _ServerOptions()  # type: ignore[no-untyped-call]
    try:
        config.parseOptions(  # type: ignore[no-untyped-call]
            ["--nodaemon", "--pidfile=", _MAKER.tapname, *args]
        )
    except usage.UsageError as e:
        print(f"python -m pushtwisted: {e}", file=sys.stderr)
        print("Try 'python -m pushtwisted --help'.", file=sys.stderr)
        raise SystemExit(2) from None
    runApp(config)  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
