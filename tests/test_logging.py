"""Metric loggers: jsonl truncation on resume, and a real offline W&B run written to the run folder."""

from __future__ import annotations

import json

from sparsetune.engine.logging import JsonlLogger, build_logger
from sparsetune.jobs.config import compose_job as compose


def test_jsonl_resume_drops_records_after_checkpoint(tmp_path):
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.log({"loss": float(step)}, step)
    log.close()
    JsonlLogger(tmp_path / "metrics.jsonl", truncate_after_step=3).close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_wandb_offline_run_is_written_and_closes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(["logger.backends=[jsonl,wandb]"])
    logger = build_logger(cfg.logger, tmp_path, {"a": 1}, "test-run")
    logger.log({"loss": 1.5, "eval/x/acc": 0.5}, 1)
    logger.summary({"eval": {"x": {"acc": 0.5}}, "steps": 1})
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_tables_and_images_reach_every_backend_as_records(tmp_path):
    from sparsetune.engine.logging import ConsoleLogger, MultiLogger, log_method_tables, log_results_table

    logger = MultiLogger([JsonlLogger(tmp_path / "metrics.jsonl"), ConsoleLogger()])
    logger.log({"loss": 1.0}, 4)
    log_results_table(logger, "eval/results", {"arith": {"acc": 0.5, "n": 6}, "boolq": {"acc": float("nan")}})
    log_method_tables(logger, {"baseline": {"pat": {"acc": 0.7, "per_class": [1, 2]}}}, step=5)
    logger.log_image("eval/points_plot", tmp_path / "p.png")
    logger.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[1] == {"step": 4, "table": "eval/results", "columns": ["task", "acc", "n"],
                          "rows": [["arith", 0.5, 6], ["boolq", "nan", None]]}
    # lists are left out of a table row; the step of a table defaults to the last logged step
    assert records[2] == {"step": 5, "table": "tables/baseline", "columns": ["row", "acc"], "rows": [["pat", 0.7]]}
    assert records[3] == {"step": 4, "image": "eval/points_plot", "path": str(tmp_path / "p.png")}


def test_job_type_defaults_to_the_job_that_made_the_run(tmp_path):
    from sparsetune.engine.logging import job_name

    assert job_name(tmp_path) is None
    (tmp_path / "overrides.txt").write_text("prune recipe=pat_llama method.prune_ratio=0.25\n")
    assert job_name(tmp_path) == "prune"
