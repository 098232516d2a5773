"""Ctrl-C and SIGTERM never cut a write into a run folder in half.

While `stop_on_signals()` is active, SIGINT and SIGTERM raise `RunInterrupted` (exit 130 / 143) at
once — unless a write is in progress (`critical()`: a checkpoint, a metrics line, summary.json), in
which case the stop waits until that write has finished. A second signal stops at once, even inside a
write: the write is abandoned and its writer's cleanup removes what it had started (`.tmp-step-N`).
The message says what happened; a running loop adds its step, its last good checkpoint and the resume
command through `describing()`.

A signal the parent process ignores (SIGINT of a background job started by a shell) stays ignored.
Handlers can only be installed from the main thread; elsewhere these are no-ops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from sparsetune.errors import RunInterrupted

WHAT = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Guard:
    def __init__(self) -> None:
        self.depth = 0  # nesting of critical() sections
        self.pending: int | None = None  # a signal that arrived during a write
        self.received = 0
        self.describe: list[Callable[[str], str]] = []
        self.raised: RunInterrupted | None = None  # the last interruption raised (the CLI prints it)

    def error(self, signum: int, abandoned: bool = False) -> RunInterrupted:
        what = WHAT.get(signum, f"stopped by signal {signum}")
        if abandoned:
            what += " twice: stopped at once, the write in progress was abandoned"
        text = self.describe[-1](what) if self.describe else what
        self.raised = RunInterrupted(text, EXIT.get(signum, 128 + int(signum)))
        return self.raised

    def handle(self, signum, frame) -> None:
        self.received += 1
        if self.depth and self.received == 1:
            self.pending = signum  # finish the write first; critical() raises when it ends
            return
        raise self.error(signum, abandoned=self.depth > 0)


_guard: _Guard | None = None


@contextlib.contextmanager
def stop_on_signals(describe: Callable[[str], str] | None = None) -> Iterator[_Guard | None]:
    """Handle SIGINT/SIGTERM for the block; `describe(what)` turns "interrupted (Ctrl-C)" into the
    full one-line message. Re-entrant: inside an active block it only adds `describe`. Yields the
    guard (its `raised` is the interruption, for a caller that only sees an exit status), or None
    outside the main thread."""
    global _guard
    if _guard is not None:
        with describing(describe):
            yield _guard
        return
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    guard = _Guard()
    if describe is not None:
        guard.describe.append(describe)
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN:
            continue
        old[sig] = current
        signal.signal(sig, guard.handle)
    _guard = guard
    try:
        yield guard
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _guard = None


@contextlib.contextmanager
def describing(describe: Callable[[str], str] | None) -> Iterator[None]:
    """While the block runs, an interruption's message is `describe(what)` (the innermost wins)."""
    guard = _guard
    if guard is None or describe is None:
        yield
        return
    guard.describe.append(describe)
    try:
        yield
    finally:
        guard.describe.remove(describe)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A write that a first SIGINT/SIGTERM must not interrupt; the stop happens right after it."""
    guard = _guard
    if guard is None:
        yield
        return
    guard.depth += 1
    try:
        yield
    finally:
        guard.depth -= 1
    if guard.depth == 0 and guard.pending is not None:
        signum, guard.pending = guard.pending, None
        raise guard.error(signum)
