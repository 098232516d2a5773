"""`make reproduce`: every paper's headline table at small scale, from runs made here, into
reports/REPRODUCE.md (tables beside the papers' figures, PNG plots, the command of every number).

    python scripts/reproduce.py                 # the full plan (hours on a 2-core CPU: docs/reproduce.md; resumable)
    python scripts/reproduce.py --jobs 2        # two rows at a time, one thread each (benches still alone)
    python scripts/reproduce.py --quick         # smoke version: the whole chain in 11 min, numbers not results
    python scripts/reproduce.py --only pat      # tables whose name contains "pat"
    python scripts/reproduce.py --seeds 0       # seed 0 of every row: a first pass that measures each row's cost
    python scripts/reproduce.py --list          # what would run, and what is finished
    python scripts/reproduce.py --report-only   # rewrite the report from finished runs

Finished runs (a run folder with summary.json, a bench JSON) are reused, so an interrupted reproduction
continues where it stopped. The plan lives in scripts/repro/plan.py.
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro.plan import BENCHES, RUNS, TABLES  # noqa: E402
from repro.report import README_BEGIN, README_END, readme_table, table_rows, update_readme, write_report  # noqa: E402
from repro.runner import Layout, bench_command, execute, run_command, shown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny steps and eval limits: a smoke test of every table")
    parser.add_argument("--only", help="only tables whose name contains this text")
    parser.add_argument("--seeds", help="only these seeds of each row, e.g. 0 or 0,1 (a later full run reuses them)")
    parser.add_argument("--list", action="store_true", help="list the commands and whether each is finished")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training/eval rows run at once, each with cpu_count/jobs threads (benches run alone)")
    parser.add_argument("--skip-benches", action="store_true",
                        help="run the tables' training/eval rows only (benches want the machine to themselves)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished runs, run nothing")
    parser.add_argument("--results", type=Path, help="results root (default results/quick or results/full)")
    parser.add_argument("--report", type=Path,
                        help="default reports/REPRODUCE.md (--quick: reports/REPRODUCE-quick.md, so a smoke run "
                             "never replaces the full report)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="the README whose reproduction table a complete full run regenerates")
    args = parser.parse_args(argv)

    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        parser.error(f"--seeds takes seed numbers separated by commas, e.g. 0 or 0,1 (got {args.seeds!r})")
    layout = Layout(args.results or ROOT / "results" / ("quick" if args.quick else "full"), args.quick, args.jobs, seeds)
    args.report = args.report or ROOT / "reports" / ("REPRODUCE-quick.md" if args.quick else "REPRODUCE.md")
    tables = [t for t in TABLES if not args.only or args.only in t.name]
    names = {t.name for t in tables}
    runs = [r for r in RUNS if r.table in names]
    benches = [b for b in BENCHES if b.table in names and (b.in_quick or not args.quick) and not args.skip_benches]
    if args.list:
        for run in runs:
            for seed in layout.seeds(run):
                done = "done" if layout.finished_run(run, seed) else "todo"
                print(f"{done}  sparsetune {' '.join(run_command(run, seed, layout))}")
        for bench in benches:
            done = "done" if layout.bench_file(bench).is_file() else "todo"
            print(f"{done}  sparsetune {' '.join(bench_command(bench, layout.bench_file(bench), args.quick))}")
        return 0
    failures: list[str] = []
    if not args.report_only:
        # a SIGTERM (a session's end, `kill`) stops like Ctrl-C: the pool terminates its children and the
        # invocation's wall clock is still recorded
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        failures = execute(layout, runs, benches)
    out = write_report(layout, tables, runs, benches, args.report, failures)
    print(f"report: {out}")
    # README's table comes from a complete report only: every table, every seed, every bench, not the smoke run
    complete = (all(layout.finished_run(r, s) for r in runs for s in layout.seeds(r))
                and all(layout.bench_file(b).is_file() for b in benches))
    if complete and not (args.quick or args.only or seeds or failures or args.skip_benches) and args.readme.is_file():
        source = (f"From [{shown(out)}]({shown(out)}) (`make reproduce JOBS={layout.jobs}`), generated "
                  f"{datetime.now(timezone.utc):%Y-%m-%d}; every difference's SE and reading as in the report.")
        if update_readme(args.readme, readme_table(tables, table_rows(layout, tables, runs)), source):
            print(f"README table: {args.readme}")
        else:
            print(f"README table not written: {args.readme} has no {README_BEGIN} … {README_END} markers")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
