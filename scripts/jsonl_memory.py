"""Peak memory of loading a large jsonl training file (issue #22 item 6), file sizes side by side.

    python scripts/jsonl_memory.py                      # 30 MB and 300 MB, model=tiny_llama
    python scripts/jsonl_memory.py --sizes 30,300 --model smollm2_135m --train

Writes a jsonl file of each size (short prompt/answer rows with a few over-long ones, seeded) into
a temporary folder, then in a fresh process per file: composes `data=jsonl data.path=FILE`, loads
the model's tokenizer, runs `load_splits` + `build_train_dataset` and reads the first and last
training item. Prints the rows, the seconds and the process's peak RSS (`wait4`'s ru_maxrss, which
includes importing torch and transformers) for each size, and the ratio of the largest to the
smallest. `--train` also runs `sparsetune train ... trainer.max_steps=2 eval=none` on each file and
reports its peak RSS. Used for docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("the a of to and in is what which how many who when where was were has have does did not "
         "river city number train apple seven twelve forty heavy light north south water stone energy "
         "plant animal reason because therefore sum product total answer question choose correct").split()


def write_file(path: Path, megabytes: float, seed: int = 0) -> int:
    """Rows like {"prompt": "...", "answer": "..."} (60-400 bytes; one in 2,000 has a 3,000-word
    prompt) until the file holds `megabytes` MB; returns the number of rows."""
    rng, target, size, rows = random.Random(seed), int(megabytes * 1e6), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while size < target:
            words = 3000 if rows % 2000 == 1999 else rng.randint(8, 60)
            prompt = f"Question {rows}: " + " ".join(rng.choice(WORDS) for _ in range(words)) + "?"
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
            line = json.dumps({"prompt": prompt, "answer": answer}) + "\n"
            f.write(line)
            size, rows = size + len(line.encode("utf-8")), rows + 1
    return rows


def child(path: str, model: str) -> None:
    """In its own process: load the file as training data and print what it took as JSON."""
    import resource

    from sparsetune.data import build_train_dataset, load_splits
    from sparsetune.jobs.config import compose_job
    from sparsetune.models import load_model

    cfg = compose_job([f"model={model}", "data=jsonl", f"data.path={path}", "logger=quiet"])
    _, tokenizer = load_model(cfg.model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    splits = load_splits(cfg.data)
    dataset, _ = build_train_dataset(splits, tokenizer, cfg.data)
    first, last = dataset[0], dataset[len(dataset) - 1]
    assert len(first["input_ids"]) and len(last["input_ids"])
    print(json.dumps({"rows": len(splits.train) + len(splits.val) + len(splits.test), "train": len(dataset),
                      "seconds": time.perf_counter() - start, "rss_before_data_mb": before}))


def run_measured(argv: list[str], timeout: float) -> tuple[str, float, int]:
    """(stdout, peak RSS in MB of that process alone, exit status): `wait4` reaps it with its own usage."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if code:
            sys.stderr.write(err.read()[-2000:])
        return out.read(), usage.ru_maxrss / 1024, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="30,300", help="file sizes in MB, comma-separated")
    ap.add_argument("--model", default="tiny_llama")
    ap.add_argument("--train", action="store_true", help="also a 2-step `sparsetune train` run per file")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="jsonl-memory-") as tmp:
        for mb in (float(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"data-{mb:g}mb.jsonl"
            n = write_file(path, mb)
            out, peak, code = run_measured([sys.executable, __file__, "--child", str(path), "--model", args.model],
                                           args.timeout)
            info = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
            row = {"MB": f"{mb:g}", "rows": n, "load s": f"{info.get('seconds', float('nan')):.1f}",
                   "peak RSS MB": f"{peak:.0f}", "before data MB": f"{info.get('rss_before_data_mb', 0):.0f}",
                   "status": "ok" if code == 0 else f"exit {code}"}
            if args.train:
                cmd = [sys.executable, "-m", "sparsetune.cli", "train", f"model={args.model}", "data=jsonl",
                       f"data.path={path}", "trainer.max_steps=2", "logger=quiet", "eval=none",
                       f"run_dir={Path(tmp) / 'runs'}"]
                start = time.perf_counter()
                _, tpeak, tcode = run_measured(cmd, args.timeout)
                row["train peak RSS MB"] = f"{tpeak:.0f}" if tcode == 0 else f"exit {tcode}"
                row["train s"] = f"{time.perf_counter() - start:.1f}"
            rows.append((row, peak))
            path.unlink()
    cols = list(rows[0][0])
    print(" | ".join(cols))
    for row, _ in rows:
        print(" | ".join(str(row[c]) for c in cols))
    peaks = [p for _, p in rows]
    print(f"peak RSS ratio, largest file / smallest: {peaks[-1] / peaks[0]:.2f}x")


if __name__ == "__main__":
    main()
