"""`make reproduce`: regenerate every figure quoted in README.md and docs/ from scratch, offline.

Each step is one `sparsetune` command with its own run root (results/runs/<step>); a step whose run
already finished (summary.json or output file present) is skipped, so an interrupted reproduction
resumes where it stopped. At the end results/reproduce.json collects every step's headline numbers.

    python scripts/reproduce.py                 # everything (a few hours on a 2-core CPU)
    python scripts/reproduce.py --only s2ft     # steps whose name contains "s2ft"
    python scripts/reproduce.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


@dataclass
class Step:
    name: str
    args: list[str]
    output: str | None = None  # a file the step writes (benchmarks); else the run folder's summary.json
    needs: list[str] = field(default_factory=list)  # steps whose run folder is passed as {name}

    def run_root(self) -> Path:
        return RESULTS / "runs" / self.name


STEPS = [
    Step("s2ft_base_eval", ["eval", "recipe=s2ft_llama"]),
    Step("s2ft_train", ["train", "recipe=s2ft_llama"]),
    Step("lora_train", ["train", "recipe=lora_llama"]),
    Step("bench_s2ft", ["bench", "s2ft", "--out", "results/bench-s2ft.json"], output="results/bench-s2ft.json"),
    Step("pat_lora_baseline", ["train", "recipe=lora_llama", "data=commonsense_mix", "trainer.max_steps=60",
                               "trainer.warmup_steps=6"]),
    Step("pat_prune", ["prune", "recipe=pat_llama", "method.baseline_run={pat_lora_baseline}"],
         needs=["pat_lora_baseline"]),
    Step("pat_prune_then_lora", ["train", "recipe=pat_baseline_llama"]),
    Step("bench_pat", ["bench", "pat", "--out", "results/bench-pat.json"], output="results/bench-pat.json"),
    Step("forget_3_7", ["forget", "--classes", "3,7"]),
    *[Step(f"forget_sequence_{m}", ["forget", "forget.sequence=random:4x2", f"method={m}"])
      for m in ("gslora", "gslora_pp", "gslora_nogs", "gslora_full", "gslora_retrain")],
]


def run_folder(step: Step) -> Path | None:
    """The step's finished run folder (the newest one with a summary.json under its run root)."""
    done = sorted(step.run_root().glob("*/summary.json"))
    return done[-1].parent if done else None


def finished(step: Step) -> bool:
    return (ROOT / step.output).is_file() if step.output else run_folder(step) is not None


def execute(step: Step, by_name: dict[str, Step]) -> None:
    args = list(step.args)
    for dep in step.needs:
        folder = run_folder(by_name[dep])
        if folder is None:
            raise SystemExit(f"step {step.name} needs {dep}, which has not finished")
        args = [a.replace("{" + dep + "}", str(folder)) for a in args]
    env = dict(os.environ, SPARSETUNE_RUNS=str(step.run_root()))
    cmd = [sys.executable, "-m", "sparsetune.cli", *args]
    print(f"\n=== {step.name}: sparsetune {' '.join(args)}", flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc != 0:
        raise SystemExit(f"step {step.name} failed with exit status {rc}")


def headline(step: Step) -> dict:
    if step.output:
        return {"file": step.output}
    folder = run_folder(step)
    summary = json.loads((folder / "summary.json").read_text())
    keep = ("recipe", "method", "steps", "train_loss", "wall_time_s", "peak_memory_mb", "trainable_params", "eval",
            "kept_hidden", "params_before", "params_after", "export_size_mb", "baseline", "tasks")
    return {"run": str(folder.relative_to(ROOT)), **{k: summary[k] for k in keep if k in summary}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only steps whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the steps and whether they are done")
    args = parser.parse_args(argv)
    by_name = {s.name: s for s in STEPS}
    steps = [s for s in STEPS if not args.only or args.only in s.name]
    if args.list:
        for s in steps:
            print(f"{'done' if finished(s) else 'todo':5} {s.name:22} sparsetune {' '.join(s.args)}")
        return 0
    for step in steps:
        if finished(step):
            print(f"=== {step.name}: done, skipped ({step.output or run_folder(step)})")
            continue
        execute(step, by_name)
    RESULTS.mkdir(exist_ok=True)
    report = {s.name: headline(s) for s in STEPS if finished(s)}
    (RESULTS / "reproduce.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nheadline numbers of {len(report)} steps: {RESULTS / 'reproduce.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
