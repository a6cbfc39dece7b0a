"""``python -m pushtwisted``: run, check or print the configuration (see ``pushtwisted.cli``).

``python -m pushtwisted --help`` lists the options and commands.
"""

from __future__ import annotations

from pushtwisted.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
