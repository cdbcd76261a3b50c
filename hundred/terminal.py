"""Consoles for result tables.

Rich sizes a table to the console's width, and a console that does not write to a terminal
(a CI log, ``| tee``, a file) assumes 80 columns, which cuts headers such as ``conventional
rank`` to ``conventi…``. Tables printed here get a wide console when the stream is not a
terminal, so logs keep every header in full.
"""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 200  # columns of a non-terminal stream: wide enough for every leaderboard


def table_console(stderr: bool = False) -> Console:
    """A console for tables on stdout (or stderr): the terminal's width on a terminal,
    :data:`PIPED_WIDTH` columns otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)
