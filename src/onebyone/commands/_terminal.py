"""Tables that fit the terminal without cutting a number or a name.

rich shrinks a table that is wider than the console by cutting cells with an
ellipsis. The commands print counts a reader copies and names a reader looks
up, so ``fit`` never lets that happen: numbers never wrap, names wrap (fold)
only when a single name is wider than the whole line, and when the columns do
not fit side by side they are split over several tables, each repeating the
key columns (the row's number or name) so every row can still be followed.
The console's width is rich's: the terminal's, else ``COLUMNS``, else 80.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table
from rich.text import Text

__all__ = ["Col", "fit"]

_EDGE = 1
"""Width of a table's left border; each column adds its cell padding and a border."""
_PER_COLUMN = 3


@dataclass(frozen=True)
class Col:
    """A column: its header, alignment, and whether it holds text (may fold) or a number.

    Attributes:
        header: the column's title.
        justify: ``"left"`` or ``"right"``.
        text: a text column folds a too-long value onto more lines; a number
            column never wraps.
    """

    header: str
    justify: Literal["left", "right"] = "right"
    text: bool = False


def _width(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)


def _needed(widths: Sequence[int]) -> int:
    return _EDGE + sum(w + _PER_COLUMN for w in widths)


def fit(
    columns: Sequence[Col],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    title: str | None = None,
    caption: str | None = None,
    keys: int = 1,
    sections: Sequence[int] = (),
) -> list[Table]:
    """Tables showing ``rows`` within ``width`` columns, no cell cut.

    Args:
        columns: the columns, key columns first.
        rows: the cells (rich markup allowed), one list per row.
        width: the console's width.
        title: the title (of the first table; later ones say "continued").
        caption: the caption (of the last table).
        keys: how many leading columns every table repeats.
        sections: indices of rows that end a section (a line below them).

    Returns:
        One table when everything fits side by side, else several.
    """
    natural = [
        max([_width(col.header), *(_width(row[i]) for row in rows)])
        for i, col in enumerate(columns)
    ]
    key_ids = list(range(min(keys, len(columns))))
    groups: list[list[int]] = []
    current = list(key_ids)
    for i in range(len(key_ids), len(columns)):
        if len(current) > len(key_ids) and _needed([natural[j] for j in [*current, i]]) > width:
            groups.append(current)
            current = [*key_ids]
        current.append(i)
    groups.append(current)
    tables = []
    for number, group in enumerate(groups):
        heading = title if number == 0 else (f"{title} (continued)" if title else None)
        table = Table(
            title=heading,
            caption=caption if number == len(groups) - 1 else None,
            expand=False,
        )
        for i in group:
            col = columns[i]
            if col.text:
                table.add_column(col.header, justify=col.justify, overflow="fold")
            else:
                table.add_column(col.header, justify=col.justify, no_wrap=True,
                                 min_width=natural[i])  # fmt: skip
        for index, row in enumerate(rows):
            table.add_row(*(row[i] for i in group), end_section=index in sections)
        tables.append(table)
    return tables


def table_columns(headers: Sequence[str], text: Sequence[int] = (0,)) -> list[Col]:
    """Columns named ``headers``: those at the indices ``text`` hold text (left, may fold),
    the others numbers or shapes (right, never wrap)."""
    return [Col(h, "left", True) if i in text else Col(h) for i, h in enumerate(headers)]
