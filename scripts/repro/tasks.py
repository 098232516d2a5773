"""lm-eval task files for the S²FT table's cross-data scoring: the held-out items of each data set in
CROSS_DATA, written once per results root so that every row (and the untuned model) is scored on
exactly the same items, through `eval.include_path` — the way a user adds their own tasks."""

from __future__ import annotations

from pathlib import Path

from repro.plan import CROSS_DATA, CROSS_TASKS


def write_cross_tasks(folder: Path, test_size: int) -> Path:
    """Write (once) and return the include folder holding one lm-eval task per CROSS_DATA entry."""
    tasks = folder / "tasks"
    if all((tasks / f"{name}.yaml").is_file() for name in CROSS_TASKS.values()):
        return tasks
    from sparsetune.data import load_splits
    from sparsetune.eval.lm_tasks import write_local_tasks
    from sparsetune.jobs.config import compose_job

    examples = []
    for data, _ in CROSS_DATA.values():
        # the same composition a training row uses, so its held-out split is this one
        cfg = compose_job(["recipe=s2ft_llama", f"data={data}", f"data.test_size={test_size}"])
        examples += list(load_splits(cfg.data).test)
    include, written = write_local_tasks(examples, cfg.data.prompt_template, folder)
    names = {t.lm_name for t in written}
    missing = set(CROSS_TASKS.values()) - names
    if missing:
        raise SystemExit(f"cross-data tasks not written: {sorted(missing)} (got {sorted(names)})")
    return include
