"""An audit hook that records every write (open for writing, mkdir, rename, replace, remove, rmtree)
under one folder: the multi-process tests install it in rank 1 to prove only rank 0 writes a run.

Imported by the worker scripts the elastic launcher starts (they put tests/ on sys.path first)."""

from __future__ import annotations

import os
import sys

WRITE_EVENTS = ("open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree")


def record_writes_under(folder: str) -> list[str]:
    """Install the hook (for the rest of the process: audit hooks cannot be removed) and return the
    list it appends "<event> <path>" to."""
    root = os.path.realpath(folder)
    events: list[str] = []

    def audit(event: str, args) -> None:
        if event not in WRITE_EVENTS:
            return
        path = args[0]
        if event == "open":
            mode, flags = (list(args[1:3]) + [None, None])[:2]
            writes = (set(mode) & set("wax+")) if isinstance(mode, str) else \
                bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writes:
                return
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(root):
            events.append(f"{event} {os.fsdecode(path)}")

    sys.addaudithook(audit)
    return events
