"""The console every command prints to, and the small printing helpers they share.

One module below the commands, so the parts they compose (mitigation, scoring) print to
the same console, which `commands.common.start_run` quiets on all processes but the main one.
Training progress goes to stderr instead (`training/progress.py`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)  # a path or a message is one line, whatever the terminal
# Tables fit 100 columns (a terminal's width, when narrower): what does not fit is in the CSV
# files. A log or a pipe has no width of its own and gets 100 too.
TABLE_WIDTH = 100


def table_width() -> int:
    """The columns a table may take on the console."""
    return min(console.width, TABLE_WIDTH) if console.is_terminal else TABLE_WIDTH


def print_fitted(table: Table) -> None:
    """`table` at `table_width`, its title wrapped to it."""
    if console.is_terminal:
        console.print(table, width=table_width(), soft_wrap=False)
    else:  # rich takes a log or a pipe for 80 columns, and caps a print's width at its own
        Console(file=console.file, width=TABLE_WIDTH, quiet=console.quiet).print(table)


def print_table(title: str, rows: dict[str, Any]) -> None:
    """A two-column rich table of a run's results."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    print_fitted(table)


def print_note(text: str) -> None:
    """A line of plain text (no rich highlighting of numbers and paths)."""
    console.print(text, highlight=False)


def print_warning(text: str) -> None:
    """A line starting with a yellow "warning:"."""
    console.print(f"[yellow]warning[/yellow]: {text}", highlight=False)
