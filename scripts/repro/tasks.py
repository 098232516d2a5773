"""lm-eval task files for the S²FT table's cross-data scoring: the held-out items of each data set in
CROSS_DATA, written once per results root so that every row (and the untuned model) is scored on
exactly the same items, through `eval.include_path` — the way a user adds their own tasks.

The held-out pool is cut into SHARDS disjoint shards (every SHARDS-th row of each task, `shard<k>/`):
a row's k-th seed scores shard k, so a row's seeds together score the whole pool once. Sizing the pool
for a standard error of ≤ 1 point then costs one scoring per row, not one per seed, and the seeds are
independent estimates (repro/stats.py).

Each file is sparsetune's redirect of lm-eval's stock task (data/benchmarks.py `task_yaml`: the stock
YAML `include`d, only the data pointed at the held-out rows of the shipped split), renamed
`heldout_<task>` so that it never clashes with a stock task name. The rows are the test split of the
same composition a training row uses (recipe, data set, split_seed, test_size), so no row trains on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro.plan import CROSS_DATA, CROSS_TASK_NAMES, INDOMAIN, SHARDS, cross_task

STAMP = "cross_tasks.json"  # what the folder was written for: data overrides, shards and task names


def cross_specs(data: dict[str, tuple[str, ...]], load: Callable[[Any], Any] | None = None, shards: int = 1,
                validation_docs: Callable[[Any], list[dict]] | None = None) -> list[dict[str, dict[str, Any]]]:
    """Per shard, {heldout_<task>: redirect YAML} for every task of every CROSS_DATA set (`data`: each set's
    data overrides, plan.data_overrides), and for a generated set (INDOMAIN) its validation docs under the
    in-domain name: shard k holds every shards-th item from the k-th (rows in row order)."""
    from sparsetune.data.benchmarks import shipped_rows, task_yaml
    from sparsetune.jobs.config import compose_job

    if load is None:
        from sparsetune.data import load_splits as load
    if validation_docs is None:
        from sparsetune.data.sources.benchmarks import generated_validation_docs as validation_docs
    specs: list[dict[str, dict[str, Any]]] = [{} for _ in range(shards)]

    def add(task: str, name: str, rows: Any) -> None:
        for k in range(shards):
            # zero-shot, as sparsetune scores a held-out split: without it gsm8k keeps its stock
            # num_fewshot 5 and, having no training split here, would draw the shots from these rows
            spec = task_yaml(task, rows.select(range(k, len(rows), shards)), num_fewshot=0)
            spec["task"] = cross_task(name)
            specs[k][spec["task"]] = spec

    for label, (name, tasks) in CROSS_DATA.items():
        # the same composition a training row uses, so its held-out split is this one
        cfg = compose_job(["recipe=s2ft_llama", *data[label]])
        rows: dict[str, list[int]] = {}
        for ex in load(cfg.data).test:
            if ex.task is None or ex.row is None:
                raise SystemExit(f"data={name}: held-out item without a benchmark task/row ({ex.task}, {ex.row}); "
                                 "cross-data scoring needs source=benchmarks")
            rows.setdefault(ex.task, []).append(int(ex.row))
        if set(rows) != set(tasks):
            raise SystemExit(f"data={name}: held-out tasks {sorted(rows)}, the plan expects {sorted(tasks)} "
                             "(scripts/repro/plan.py CROSS_DATA)")
        for task in tasks:
            add(task, task, shipped_rows(task).select(sorted(rows[task])))
        if label in INDOMAIN:
            import datasets

            task, alias = INDOMAIN[label]
            add(task, alias, datasets.Dataset.from_list(validation_docs(cfg.data)))
    return specs


def shard_dir(tasks: Path, shard: int) -> Path:
    return tasks / f"shard{shard}"


def _complete(tasks: Path, stamp: dict[str, Any]) -> bool:
    """The folder holds every task of every shard for these sizes, and the row files its YAMLs point at
    still exist."""
    import yaml

    marker = tasks / STAMP
    if not marker.is_file() or json.loads(marker.read_text()) != stamp:
        return False
    for shard in range(stamp["shards"]):
        for name in CROSS_TASK_NAMES:
            path = shard_dir(tasks, shard) / f"{name}.yaml"
            if not path.is_file():
                return False
            files = (yaml.safe_load(path.read_text()).get("dataset_kwargs") or {}).get("data_files") or {}
            if not files or not all(Path(f).is_file() for f in files.values()):
                return False
    return True


def write_cross_tasks(folder: Path, data: dict[str, tuple[str, ...]], load: Callable[[Any], Any] | None = None,
                      shards: int = SHARDS, validation_docs: Callable[[Any], list[dict]] | None = None) -> Path:
    """Write (once per set of data overrides and shards) and return the folder whose shard<k>/ subfolders
    each hold one lm-eval task per held-out task of CROSS_DATA (`data`: each set's overrides,
    plan.data_overrides)."""
    import shutil

    import yaml

    tasks = folder / "tasks"
    stamp = {"data": {k: list(v) for k, v in sorted(data.items())}, "tasks": list(CROSS_TASK_NAMES),
             "shards": int(shards)}
    if _complete(tasks, stamp):
        return tasks
    specs = cross_specs(data, load, shards, validation_docs)
    missing = set(CROSS_TASK_NAMES) - set(specs[0])
    if missing:
        raise SystemExit(f"cross-data tasks not written: {sorted(missing)} (got {sorted(specs[0])})")
    tasks.mkdir(parents=True, exist_ok=True)
    marker = tasks / STAMP
    if marker.is_file() and json.loads(marker.read_text()) != stamp:
        was = json.loads(marker.read_text())
        print(f"cross-data tasks in {tasks} rewritten for {stamp['data']} in {shards} shard(s) (were "
              f"{was.get('data', was.get('test_size'))} in {was.get('shards', 1)}): rows finished earlier under "
              "this results root were scored on other items", flush=True)
    marker.unlink(missing_ok=True)
    for old in [*tasks.glob("*.yaml"), *tasks.glob("shard*")]:  # nothing stale may linger
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    for k, shard in enumerate(specs):
        out = shard_dir(tasks, k)
        out.mkdir(parents=True)
        for name, spec in shard.items():
            (out / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True),
                                              encoding="utf-8")
    marker.write_text(json.dumps(stamp, indent=1))
    return tasks
