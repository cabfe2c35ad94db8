"""Lines of text read on demand, so that no corpus has to fit in memory.

A `Lines` is a range of lines of a source: text files (read by byte ranges), a column of a
`datasets` table (memory-mapped Arrow), or a list (the small corpora rendered from a KB).
Holding out a split or cutting a shard slices the range; nothing is read until iterated.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import datasets

from halluc_cli.errors import UserError

# How much of a file one read takes: the unit a worker decodes (memory stays at about this).
PIECE_BYTES = 1 << 20
TABLE_BATCH = 1_000  # rows of a datasets table read at once


class LineSource(Protocol):
    """Where lines come from: a count, a range reader and an identity for caching."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> Iterator[str]:
        """Lines [start, stop), in order."""

    def fingerprint(self) -> str:
        """Changes whenever the lines may have changed."""


@dataclass(frozen=True)
class Lines:
    """Lines [start, stop) of `source`; a slice is another range of the same source."""

    source: LineSource
    start: int
    stop: int

    @classmethod
    def of(cls, source: LineSource) -> Lines:
        """All of `source`'s lines."""
        return cls(source, 0, len(source))

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[str]:
        return self.source.read(self.start, self.stop)

    def __getitem__(self, index: slice) -> Lines:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("Lines slices are contiguous")
        return Lines(self.source, self.start + start, self.start + max(start, stop))


class LineList:
    """Lines already in memory (a corpus rendered from a KB)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def read(self, start: int, stop: int) -> Iterator[str]:
        return iter(self.lines[start:stop])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for line in self.lines:
            digest.update(line.encode("utf-8") + b"\n")
        return digest.hexdigest()


class TableColumn:
    """One text column of a `datasets` table, read a batch of rows at a time."""

    def __init__(self, table: datasets.Dataset, column: str) -> None:
        if column not in table.column_names:
            raise UserError(f"the dataset has no column {column!r} (it has {table.column_names}); set data.text_column")
        self.table = table.select_columns([column])
        self.column = column

    def __len__(self) -> int:
        return self.table.num_rows

    def read(self, start: int, stop: int) -> Iterator[str]:
        for batch_start in range(start, stop, TABLE_BATCH):
            yield from self.table[batch_start : min(batch_start + TABLE_BATCH, stop)][self.column]

    def fingerprint(self) -> str:
        return f"{self.table._fingerprint}:{self.column}"


@dataclass(frozen=True)
class _Piece:
    path: str
    offset: int  # bytes into the file
    size: int  # bytes, ending at a line break (or the end of the file)
    first_line: int  # the index of its first line among all the files' lines


class TextFiles:
    """The lines of text files, one after another, as the `datasets` "text" loader reads
    them: UTF-8, universal newlines ("\\n", "\\r\\n", "\\r"), line breaks dropped.

    One pass over the bytes at construction notes where each piece of about PIECE_BYTES
    starts and how many lines it has; reading a range decodes only the pieces it covers.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.pieces: list[_Piece] = []
        self.total = 0
        for path in self.paths:
            self._index(path)
        self._starts = [piece.first_line for piece in self.pieces]

    def _index(self, path: str) -> None:
        with open(path, "rb") as handle:
            while True:
                offset = handle.tell()
                data = handle.read(PIECE_BYTES)
                if not data:
                    return
                data += handle.readline()  # end at a line break ("\r\n" stays whole: it ends in "\n")
                count = _count_lines(data, at_end=handle.peek(1) == b"")
                self.pieces.append(_Piece(path, offset, len(data), self.total))
                self.total += count

    def __len__(self) -> int:
        return self.total

    def read(self, start: int, stop: int) -> Iterator[str]:
        index = max(0, bisect.bisect_right(self._starts, start) - 1)
        while start < stop and index < len(self.pieces):
            piece = self.pieces[index]
            lines = _decode(piece)
            yield from lines[start - piece.first_line : stop - piece.first_line]
            start = piece.first_line + len(lines)
            index += 1

    def fingerprint(self) -> str:
        stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in self.paths]
        return hashlib.sha256(repr(stats).encode()).hexdigest()


def _count_lines(data: bytes, at_end: bool) -> int:
    """The lines in `data` (which ends at a line break unless `at_end`), as `_decode` splits them."""
    breaks = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    unended = at_end and data and not data.endswith((b"\n", b"\r"))
    return breaks + int(bool(unended))


def _decode(piece: _Piece) -> list[str]:
    with open(piece.path, "rb") as handle:
        handle.seek(piece.offset)
        data = handle.read(piece.size)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{piece.path} is not UTF-8 text ({error.reason}); save it as UTF-8") from error
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()  # the text after the last line break: nothing
    return lines
