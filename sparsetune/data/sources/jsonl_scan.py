"""One streaming pass over a JSON Lines file or a JSON array: each row with its byte span.

Memory is bounded by the longest row, not the file: lines are read one at a time, an array is
decoded a megabyte at a time with `json.JSONDecoder.raw_decode`. The span (byte offset, byte
length) lets the row be read again later (`sparsetune.data.rows`) without keeping it. Errors name the
file and line (JSON Lines) or the file and line of the bad spot (arrays), as one line.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sparsetune.errors import DataError

CHUNK = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
# a decode error this far before the end of the text read so far cannot be the end of the text
# cutting a value short (the longest cut-short token, `false`, is 5 characters)
_MARGIN = 64


def scan_rows(path: Path) -> Iterator[tuple[str, int, int, Any]]:
    """(where, byte offset, byte length, decoded value) per row; `where` is 'file:line' (JSON Lines)
    or 'file: row N' (a JSON array, recognised by a leading '['). Blank lines are skipped."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
            while head and not head.lstrip():
                head = f.read(4096)
            f.seek(0)
            rows = _array_rows(path, f) if head.lstrip().startswith(b"[") else _line_rows(path, f)
            yield from rows
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _line_rows(path: Path, f: BinaryIO) -> Iterator[tuple[str, int, int, Any]]:
    offset = 0
    for lineno, line in enumerate(f, start=1):
        start, offset = offset, offset + len(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {start + exc.start})") from None
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        yield f"{path}:{lineno}", start, len(line), value


class _Text:
    """The file's text from a position on, decoded as it is needed, with that position's byte
    offset and line number kept up to date."""

    def __init__(self, path: Path, f: BinaryIO):
        self.path, self.f = path, f
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos = "", 0
        self.byte, self.line, self.read_bytes, self.eof = 0, 1, 0, False

    def fill(self) -> None:
        """Read more: at least a chunk, and as much as is buffered (a long value is re-decoded from
        its start after each read, so the reads double)."""
        if self.eof:
            return
        data = self.f.read(max(CHUNK, len(self.buf) - self.pos))
        pending = len(self.decoder.getstate()[0])
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            at = self.read_bytes - pending + exc.start
            raise DataError(f"{self.path}: not UTF-8 text ({exc.reason} at byte {at})") from None
        self.read_bytes += len(data)
        self.eof = not data
        self.buf, self.pos = self.buf[self.pos:] + text, 0

    def advance(self, n: int) -> None:
        seg = self.buf[self.pos:self.pos + n]
        self.byte += len(seg.encode("utf-8"))
        self.line += seg.count("\n")
        self.pos += n

    def peek(self) -> str:
        """The next character that is not JSON whitespace ('' at the end of the file)."""
        while True:
            end = _WS.match(self.buf, self.pos).end()
            self.advance(end - self.pos)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self.fill()

    def fail(self, msg: str, pos: int | None = None) -> DataError:
        line = self.line + self.buf.count("\n", self.pos, self.pos if pos is None else pos)
        return DataError(f"{self.path}:{line}: invalid JSON ({msg})")

    def value(self, decoder: json.JSONDecoder) -> tuple[Any, int, int]:
        """(the JSON value at the position, its byte offset, its byte length); moves past it."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number or literal at the end may go on
                    start = self.byte
                    self.advance(end - self.pos)
                    return value, start, self.byte - start
            except json.JSONDecodeError as exc:
                cut_short = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - _MARGIN
                if self.eof or not cut_short:
                    raise self.fail(exc.msg, exc.pos) from None
            self.fill()


def _array_rows(path: Path, f: BinaryIO) -> Iterator[tuple[str, int, int, Any]]:
    text, decoder = _Text(path, f), json.JSONDecoder()
    text.peek()
    text.advance(1)  # the '['
    if text.peek() == "]":
        text.advance(1)
    else:
        index = 0
        while True:
            value, start, length = text.value(decoder)
            yield f"{path}: row {index}", start, length, value
            index += 1
            after = text.peek()
            text.advance(1)
            if after == "]":
                break
            if after != ",":
                raise text.fail("Expecting ',' delimiter", text.pos - 1)
            text.peek()
    if text.peek():
        raise text.fail("Extra data")
