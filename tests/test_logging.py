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
