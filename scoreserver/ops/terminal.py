"""What the command line prints: tables that fit the terminal (rich measures display widths),
short times, and output made safe for a terminal (no control characters from the database)."""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

FOLD_MIN = 12  # the narrowest a column of free text (a name, a note) is squeezed to

# Characters that steer a terminal rather than show: C0 controls but tab and newline, DEL, C1
# controls (0x9b is a one-byte CSI), and bidirectional overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    fold: Collection[str] = (),
    optional: Sequence[str] = (),
) -> None:
    """Rows as a table that fits the terminal and keeps its columns straight for any name
    (wide CJK characters, emoji; rich measures display widths).

    Only the columns named in `fold` (free text: names, notes) wrap; ids, codes, numbers,
    times and headers never do. Where even that is too wide, the columns named in `optional`
    are left out, in that order, and a line on stderr says which.
    """
    if not rows:
        print("(none)")
        return
    cells = [[str(cell) for cell in row] for row in rows]
    width = shutil.get_terminal_size((120, 24)).columns
    natural = {
        h: max(cell_len(h), *(cell_len(row[i]) for row in cells)) for i, h in enumerate(headers)
    }

    def needed(columns: Sequence[str]) -> int:
        squeezed = [
            min(natural[h], max(cell_len(h), FOLD_MIN)) if h in fold else natural[h]
            for h in columns
        ]
        return sum(squeezed) + 3 * (len(columns) - 1)  # a rule and a space either side

    shown = list(headers)
    left_out = []
    for header in optional:
        if needed(shown) <= width:
            break
        shown.remove(header)
        left_out.append(header)
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for header in shown:
        if header in fold:
            squeezed = min(natural[header], max(cell_len(header), FOLD_MIN))
            grid.add_column(header, overflow="fold", min_width=squeezed)
        else:
            grid.add_column(header, no_wrap=True, min_width=natural[header])
    keep = [headers.index(h) for h in shown]
    for row in cells:
        grid.add_row(*(row[i] for i in keep))
    # Plain text only: no colours or styles (output goes to terminals, pipes and files alike).
    console = Console(file=sys.stdout, width=width, color_system=None, highlight=False, emoji=False)
    console.print(grid)
    if left_out:
        print(
            f"(left out to fit {width} columns: {', '.join(left_out)}; widen the terminal,"
            " or see the JSON or `show`)",
            file=sys.stderr,
        )


def fit(report: str) -> str:
    """A report's long lines wrapped at the terminal's width, under their own indent."""
    width = shutil.get_terminal_size((120, 24)).columns
    out = []
    for line in report.splitlines():
        if cell_len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out.extend(
            textwrap.wrap(
                line,
                width,
                subsequent_indent=indent + "    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def fmt_short(ms: int | None) -> str:
    """A time for a table's column: minutes, and the year only when it is not this one."""
    if ms is None:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return at.strftime("%m-%d %H:%M" if at.year == datetime.now(UTC).year else "%Y-%m-%d")


def terminal_safe(text: str) -> str:
    """`text` with every character that could steer a terminal written as an escape."""
    return _UNSAFE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


class TerminalSafe:
    """A text stream that escapes what `terminal_safe` escapes. Names, user agents and notes
    come from players: printed raw, an ESC or OSC 52 would reach the operator's terminal."""

    def __init__(self, inner: Any):
        self._inner = inner

    def write(self, text: str) -> int:
        return int(self._inner.write(terminal_safe(text)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
