"""Examples read on demand from byte spans of data files, so a large file costs a few integers of
memory per row rather than its text, its Python objects and its token ids (issue #22 item 6).

`RowFiles` knows where every row lies (file, byte offset, byte length: numpy arrays) and how a row
becomes an Example; `LazyExamples` is one part of a split (train, val or test) as an array of row
numbers, a read-only sequence that reads, parses and checks a row each time it is indexed.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparsetune.data.types import Example
from sparsetune.errors import DataError

# (the row's decoded JSON value, its file, where it is for messages) -> Example
Parse = Callable[[Any, Path, str], Example]


class RowFiles:
    """Row spans of a set of files. A file is opened on its first read in a process (reads are
    positional, so threads can share it) and must still have the size and modification time it had
    when it was indexed: a file changed under a job stops it with one line rather than feeding it
    other rows."""

    def __init__(self, paths: Sequence[Path], stats: Sequence[tuple[int, int]], file: np.ndarray,
                 start: np.ndarray, length: np.ndarray, parse: Parse):
        self.paths, self.stats, self.parse = list(paths), list(stats), parse
        self.file, self.start, self.length = file, start, length
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.start)

    def read(self, row: int) -> Example:
        f, start = int(self.file[row]), int(self.start[row])
        data = os.pread(self._fd(f), int(self.length[row]), start)
        where = f"{self.paths[f]}: row at byte {start}"
        try:
            value = json.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise DataError(f"{where}: no longer valid JSON ({exc}); the file changed after it was loaded") from None
        return self.parse(value, self.paths[f], where)

    def _fd(self, f: int) -> int:
        fd = self._fds.get(f)
        if fd is not None:
            return fd
        with self._lock:
            if f not in self._fds:
                path = self.paths[f]
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    raise DataError(f"{path}: cannot read ({exc.strerror})") from None
                st = os.fstat(fd)
                if (st.st_size, st.st_mtime_ns) != tuple(self.stats[f]):
                    os.close(fd)
                    raise DataError(f"{path}: changed since it was loaded; start the job again")
                self._fds[f] = fd
            return self._fds[f]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:  # os may be gone at exit
        for fd in getattr(self, "_fds", {}).values():
            try:
                _close(fd)
            except OSError:
                pass

    def __getstate__(self) -> dict:  # descriptors and locks stay with their process
        return {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fds, self._lock = {}, threading.Lock()


class LazyExamples(Sequence):
    """The Examples of `rows` (row numbers into `files`, in this part's order), read when indexed.

    Behaves as a read-only list: len, int and slice indexing (a slice is another LazyExamples),
    iteration, and `+` with another sequence (which gives a list)."""

    def __init__(self, files: RowFiles, rows: np.ndarray):
        self.files, self.rows = files, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyExamples(self.files, self.rows[index])
        return self.files.read(int(self.rows[index]))

    def __iter__(self) -> Iterator[Example]:
        for row in self.rows:
            yield self.files.read(int(row))

    def __add__(self, other: Sequence) -> list:
        return list(self) + list(other)

    def __radd__(self, other: Sequence) -> list:
        return list(other) + list(self)

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.files.paths[:3]) + (", ..." if len(self.files.paths) > 3 else "")
        return f"LazyExamples({len(self)} rows of {names})"
