"""The one place the CLI's rich Console is built, and how its messages and headings are printed.

On a terminal: colour, and tables sized to the window. Piped, redirected or
under cron (stdout is not a TTY): plain text with no colour, no wrapping at any
width and no "…": tables are as wide as their content, so a URL, a path or a
header is never broken or cut, whatever COLUMNS says.

Messages (errors, paths, URLs, prompts) are soft-wrapped in both cases: rich
never inserts a line break into them; a terminal folds a long line only on
screen, and copying it gives the line whole.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.text import Text

# Wider than any line Newsdesk prints: in plain mode a table is as wide as its content, never wrapped.
PLAIN_WIDTH = 100_000


def stream_is_terminal(stream: TextIO | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def make_console(file: TextIO | None = None) -> Console:
    """The CLI's console. `file=None` writes to whatever sys.stdout is when printing."""
    if stream_is_terminal(file if file is not None else sys.stdout):
        return Console(file=file, soft_wrap=True)
    return Console(
        file=file, width=PLAIN_WIDTH, soft_wrap=True, force_terminal=False, color_system=None,
        highlight=False, emoji=False,
    )


def say(console: Console, text: object, *, label: str | None = None, style: str | None = None) -> None:
    """One message: an optional styled label, then `text` exactly as given (never read as markup), soft-wrapped."""
    line = Text()
    if label:
        line.append(label, style=style)
        line.append(" ")
    line.append(str(text))
    console.print(line, soft_wrap=True, highlight=False)


def heading(console: Console, title: str) -> None:
    """A section heading that does not depend on the console width (unlike rich's Rule)."""
    console.print(Text(f"──── {title} ────", style="bold"), soft_wrap=True, highlight=False)
