"""Data files read as a stream: plain or gzip (told by the first bytes), a line or a JSON item at a time.

`DataFile` gives a file's non-blank lines (`lines`: number, byte offset, text, or where a byte is not UTF-8) or
its JSON items (`items`: a JSON array element by element, or JSON Lines line by line, told apart by the first
character), each with the line it starts on and its raw text, so memory does not grow with the file. A line or
element that does not parse is an item with its problem, and reading goes on; a file that cannot be read at
all (missing, a folder, unreadable, truncated or corrupt compressed data, a JSON array that never closes)
raises, naming the file and how far reading got.

A JSON array is read with `raw_decode` over a sliding text buffer, so the raw text is held at most once. Parsed
objects remember keys given more than once (`JsonObject`), of which json itself keeps only the last.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_CHUNK_CHARS = 1 << 20
# json's parser recurses once per nesting level; a record nested past the recursion limit is rejected.
_TOO_DEEP = "JSON nested too deeply (past Python's recursion limit); a record is a flat object"


class DataError(ValueError):
    """The input cannot be used: a file that cannot be read, a fatal format error, or (strict) any bad record."""


@dataclass(frozen=True)
class Problem:
    """What is wrong with one record: the field ("<line>" or "<record>" when it did not parse), a short reason
    (rejected records are counted per reason), and the message."""

    field: str
    reason: str
    message: str


# One JSON item as read (a line of JSON Lines or an element of a JSON array): the line it starts on (from 1), its
# text as read, the parsed JSON (None when it did not parse) and why it did not parse. Plain tuples: named ones
# made reading JSON Lines about a third slower (measured on 300,000 short lines).
RawItem = tuple[int, str, Any, list[Problem]]
# One non-blank line: its number (from 1), its text without the line ending (bytes that are not UTF-8 as backslash
# escapes), and where its first byte that is not UTF-8 is, as a file offset (None when it is all UTF-8).
Line = tuple[int, str, str | None]


class JsonObject(dict):
    """A parsed JSON object that remembers keys given more than once (json keeps only the last)."""

    duplicate_keys: tuple[str, ...] = ()


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        obj.duplicate_keys = tuple(key for key, n in counts.items() if n > 1)
    return obj


# json accepts NaN/Infinity literals; they parse to floats, and validation rejects them by field.
DECODER = json.JSONDecoder(object_pairs_hook=_object_from_pairs)


class DataFile:
    """An open data file (or stdin) read as a stream; a context manager that closes what it opened."""

    def __init__(self, handle: gzip.GzipFile | io.BufferedReader, name: str, owned: bool = True) -> None:
        self.handle, self.name, self.owned = handle, name, owned
        self.compressed = isinstance(handle, gzip.GzipFile)
        self.line = 0  # the last line read, for the message when reading fails ...
        self.elements: int | None = None  # ... or, in a JSON array, the elements read

    @classmethod
    def open(cls, path: str | Path, what: str = "data file") -> DataFile:
        """`path` opened for reading, decompressed when its first bytes are gzip's; `what` names it in errors."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such {what}")
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a {what}")
        try:
            with open(path, "rb") as probe:
                compressed = probe.read(2) == GZIP_MAGIC
            handle = gzip.open(path, "rb") if compressed else open(path, "rb")  # noqa: SIM115 (closed by __exit__)
        except OSError as error:
            raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
        return cls(handle, str(path))

    def __enter__(self) -> DataFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.owned:
            self.handle.close()

    def bytes_read(self) -> int:
        """How far reading got, in bytes of the (decompressed) file: its whole size once every item is read."""
        return self.handle.tell()

    def lines(self) -> Iterator[Line]:
        """Every line that is not blank, in order; a byte-order mark before the first is dropped."""
        offset = 0
        with self._reading():  # one guard around the whole loop: one per line slowed reading measurably
            for number, data in enumerate(self.handle, start=1):
                self.line, start, offset = number, offset, offset + len(data)
                if number == 1 and data.startswith(_BOM):
                    data, start = data[len(_BOM) :], start + len(_BOM)
                if not data.strip():
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as error:
                    where = f"{'decompressed ' if self.compressed else ''}file offset {start + error.start}"
                    message = f"byte {error.start + 1} of the line ({where}) is not valid UTF-8"
                    yield number, data.decode("utf-8", "backslashreplace").rstrip("\r\n"), message
                    continue
                yield number, text.rstrip("\r\n"), None

    def items(self) -> Iterator[RawItem]:
        """Each element of a JSON array or each line of JSON Lines, told apart by the first character."""
        with self._reading():
            first = self.handle.peek(4096)[:4096].lstrip(_BOM + b" \t\r\n")[:1]
        if first == b"[":
            yield from self._array_items()
        elif first == b"{" or not first:
            yield from self._json_lines()
        else:
            raise DataError(
                f"{self.name}: expected a JSON array ('[') or JSON Lines ('{{'), found {first!r} at the start of "
                "the file"
            )

    def _json_lines(self) -> Iterator[RawItem]:
        for number, text, not_utf8 in self.lines():
            if not_utf8 is not None:
                yield number, text, None, [Problem("<line>", "non_utf8", f"line {number}: {not_utf8}")]
                continue
            try:
                yield number, text, DECODER.decode(text), []
            except json.JSONDecodeError as error:
                problem = Problem("<line>", "malformed_json", f"line {number} column {error.colno}: {error.msg}")
                yield number, text, None, [problem]
            except RecursionError:
                yield number, text, None, [Problem("<line>", "too_deep", f"line {number}: {_TOO_DEEP}")]

    def _array_items(self) -> Iterator[RawItem]:
        text = io.TextIOWrapper(self.handle, encoding="utf-8-sig", errors="surrogateescape", newline="")

        def read(size: int) -> str:
            with self._reading():
                return text.read(size)

        self.elements = 0
        try:
            for item in _ArrayReader(read, self.name).items():
                self.elements += 1
                yield item
        finally:
            # Hand the byte stream back open: the caller closes it, and may still ask how far reading got.
            text.detach()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Truncated or corrupt compressed data, or a read error, as one DataError naming the file and how far
        reading got (in a JSON array, the reader buffers ahead of the elements it has given)."""
        try:
            yield
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise DataError(
                f"{self.name}: the compressed data is truncated or corrupt {self._how_far()} (reading stopped at "
                f"decompressed byte {self._position()}): {error}"
            ) from None
        except OSError as error:
            raise DataError(f"{self.name}: cannot read it {self._how_far()} ({error.strerror or error})") from None

    def _how_far(self) -> str:
        if self.elements is None:
            return f"after line {self.line}"
        return f"after {self.elements} elements of the JSON array"

    def _position(self) -> str:
        try:
            return str(self.bytes_read())
        except (OSError, ValueError, EOFError):
            return "unknown"


class _ArrayReader:
    """Element-by-element reader of a JSON array held in a sliding buffer, with line/column tracking.

    A malformed element is reported with its line and column, then reading resumes at the next '{'
    that follows a ',' and parses as a whole element; the text in between is kept as the raw record.
    """

    def __init__(self, read: Callable[[int], str], name: str) -> None:
        self.read, self.name = read, name
        self.buf = ""
        self.eof = False
        self.mark, self.line, self.col = 0, 1, 0  # buffer offset whose (1-based line, 0-based column) we know

    def items(self) -> Iterator[RawItem]:
        pos = self._skip_ws(0)
        if not self.buf.startswith("[", pos):
            raise DataError(f"{self.name}, line {self.line}: expected '[' at the start of a JSON array")
        pos = self._skip_ws(pos + 1)
        while not self.buf.startswith("]", pos):
            if pos >= len(self.buf):
                line, col = self._where(pos)
                raise DataError(
                    f"{self.name}, line {line} column {col}: the file ends before the JSON array is closed with ']'"
                )
            item, pos = self._element(pos)
            yield item
            pos = self._skip_ws(pos)
            if self.buf.startswith(",", pos):
                pos = self._skip_ws(pos + 1)
        tail = self._skip_ws(pos + 1)
        if tail < len(self.buf):
            line, col = self._where(tail)
            raise DataError(f"{self.name}, line {line} column {col}: unexpected text after the end of the JSON array")

    def _element(self, pos: int) -> tuple[RawItem, int]:
        """Parse the element at `pos`, reading more input until it is whole or the input ends."""
        pos = self._compact(pos)
        while True:
            try:
                value, end = DECODER.raw_decode(self.buf, pos)
                if end < len(self.buf) or self.eof:
                    after = self._skip_ws(end)
                    if after < len(self.buf) and self.buf[after] not in ",]":
                        raise json.JSONDecodeError("expected ',' or ']' after an element", self.buf, after)
                    line, _ = self._advance(pos)
                    return (line, self.buf[pos:end], value, []), end
            except json.JSONDecodeError as error:
                if self.eof:
                    return self._recover(pos, error)
            except RecursionError:
                if self.eof:
                    return self._recover(pos, json.JSONDecodeError(_TOO_DEEP, self.buf, pos))
            self._fill()

    def _recover(self, pos: int, error: json.JSONDecodeError) -> tuple[RawItem, int]:
        """Report the malformed element and skip to the next place where a whole element parses."""
        line, _ = self._advance(pos)
        err_line, err_col = self._where(error.pos)
        resume = self.buf.find("{", max(error.pos, pos + 1))
        while resume != -1 and not self._starts_element(resume):
            resume = self.buf.find("{", resume + 1)
        if resume == -1:
            closing = self.buf.rstrip().rfind("]")
            resume = closing if closing > pos else len(self.buf)
        raw = self.buf[pos:resume].rstrip().removesuffix(",").rstrip()
        problem = Problem("<record>", "malformed_json", f"line {err_line} column {err_col}: {error.msg}")
        return (line, raw, None, [problem]), resume

    def _starts_element(self, pos: int) -> bool:
        # An element follows a ',' (or a '}' when the comma itself is what is missing).
        before = pos - 1
        while before >= 0 and self.buf[before] in " \t\r\n":
            before -= 1
        if before < 0 or self.buf[before] not in ",}":
            return False
        try:
            _, end = DECODER.raw_decode(self.buf, pos)
        except json.JSONDecodeError:
            return False
        after = self._skip_ws(end)
        return after >= len(self.buf) or self.buf[after] in ",]"

    def _skip_ws(self, pos: int) -> int:
        while True:
            while pos < len(self.buf) and self.buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(self.buf) or self.eof:
                return pos
            self._fill()

    def _fill(self) -> None:
        chunk = self.read(_CHUNK_CHARS)
        self.eof = not chunk
        self.buf += chunk

    def _compact(self, pos: int) -> int:
        """Drop the consumed text before `pos` so the buffer holds only unread input."""
        if pos < _CHUNK_CHARS:
            return pos
        self._advance(pos)
        self.buf, self.mark = self.buf[pos:], 0
        return 0

    def _where(self, pos: int) -> tuple[int, int]:
        """(line, 1-based column) of buffer offset `pos` >= self.mark, without moving the mark."""
        newlines = self.buf.count("\n", self.mark, pos)
        if not newlines:
            return self.line, self.col + pos - self.mark + 1
        return self.line + newlines, pos - self.buf.rfind("\n", self.mark, pos)

    def _advance(self, pos: int) -> tuple[int, int]:
        self.line, column = self._where(pos)
        self.col, self.mark = column - 1, pos
        return self.line, column
