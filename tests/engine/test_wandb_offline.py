"""W&B as its users see it, read back from real offline runs (no mocks): the run's group and job_type,
step axes (define_metric), eval results and bench ratios as tables, images, the export as an Artifact.

The offline run's `run-<id>.wandb` is a LevelDB-style log of `wandb_internal_pb2.Record`s (a 7-byte
`:W&B` header, then 32 KiB blocks of records with 7-byte headers); `records()` reads it back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from sparsetune.engine.logging import build_logger
from sparsetune.jobs.config import compose_job as compose

BLOCK = 32768


def records(wandb_file: Path) -> list[pb.Record]:
    data = wandb_file.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full record, or the last piece of a split one
            record = pb.Record()
            record.ParseFromString(buf + chunk if kind == 4 else chunk)
            out.append(record)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
    return out


def offline_run(folder: Path) -> tuple[Path, dict[str, list]]:
    """The single offline run under folder/wandb: (its files/ folder, records by type)."""
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # wandb-core may still be flushing the file when finish() returns: wait for the exit record
    deadline = time.monotonic() + 30
    while True:
        by_type: dict[str, list] = {}
        for record in records(next(runs[0].glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            by_type.setdefault(kind, []).append(getattr(record, kind))
        if "exit" in by_type or time.monotonic() > deadline:
            return runs[0] / "files", by_type
        time.sleep(0.2)


def history(by_type) -> list[dict]:
    return [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json) for item in h.item}
            for h in by_type.get("history", [])]


def tables(files: Path) -> dict[str, dict]:
    """media/table/<key>_<step>_<hash>.table.json → {key: {"columns", "data"}}."""
    out = {}
    for f in (files / "media" / "table").rglob("*.table.json"):
        key = str(f.relative_to(files / "media" / "table")).rsplit("_", 2)[0]
        out[key] = json.loads(f.read_text())
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


def test_logger_sets_group_job_type_step_axes_tables_images_artifacts(offline, tmp_path):
    from PIL import Image

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "overrides.txt").write_text("forget recipe=gslora_vit\n")  # the job that made the run
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "plot.png")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "weights.bin").write_bytes(b"123")
    cfg = compose(["logger.backends=[jsonl,wandb]", "logger.group=sweep-7"])
    logger = build_logger(cfg.logger, run_dir, {"a": 1}, "run-name")
    logger.log({"loss": 2.0, "lr": 0.1}, 1)
    logger.log({"loss": 1.0, "forget/acc_f": 0.05}, 2)
    logger.log_table("forget/classes", ["class", "acc"], [["3", 0.0], ["7", 0.5]])
    logger.log_image("forget/group_norms", tmp_path / "plot.png")
    logger.log_artifact(tmp_path / "export", "run-name-merged", metadata={"format": "merged"})
    logger.summary({"eval": {"heldout": {"acc": 0.25}}, "steps": 2})  # a train job's final summary
    logger.close()

    files, by_type = offline_run(run_dir)
    run = by_type["run"][0]
    assert run.run_group == "sweep-7" and run.job_type == "forget" and run.display_name == "run-name"
    axes = {m.glob_name: m.step_metric for m in by_type["metric"] if m.glob_name}
    assert axes == {"train/*": "train/step", "forget/*": "forget/step"}
    rows = history(by_type)
    assert rows[0]["train/loss"] == 2.0 and rows[0]["train/step"] == 1 and rows[0]["train/lr"] == 0.1
    assert rows[1]["forget/acc_f"] == 0.05 and rows[1]["forget/step"] == 2
    table = tables(files)["forget/classes"]
    assert table["columns"] == ["class", "acc"] and table["data"] == [["3", 0.0], ["7", 0.5]]
    assert tables(files)["eval/results"] == {"columns": ["task", "acc"], "data": [["heldout", 0.25]]}
    assert list((files / "media" / "images").rglob("*.png"))
    artifact = next(a for a in by_type["artifact"] if a.type == "model")
    assert artifact.name == "run-name-merged"
    assert [e.path for e in artifact.manifest.contents] == ["weights.bin"]
    assert json.loads(artifact.metadata) == {"format": "merged"}
    # the jsonl backend got the table and the image too (records without metric keys)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[2] == {"step": 2, "table": "forget/classes", "columns": ["class", "acc"],
                        "rows": [["3", 0.0], ["7", 0.5]]}
    assert lines[3]["image"] == "forget/group_norms" and lines[3]["path"].endswith("plot.png")


def test_eval_results_are_a_table_in_an_eval_run(offline, tmp_path):
    from sparsetune.jobs.evaluate import log_eval

    run_dir = tmp_path / "20261130-120000-lora_llama"
    run_dir.mkdir()
    cfg = compose(["logger.backends=[jsonl,wandb]"])
    results = {"arith": {"acc": 0.5, "n": 6}, "boolq": {"acc": 0.75, "n": 4}, "gsm": {"acc": float("nan")}}
    log_eval(cfg, run_dir, results, None, step=3)
    files, by_type = offline_run(run_dir)
    run = by_type["run"][0]
    assert run.job_type == "eval" and run.run_group == run_dir.name  # with the run's train/export runs
    table = tables(files)["eval/results"]
    assert table["columns"] == ["task", "acc", "n"]
    assert table["data"] == [["arith", 0.5, 6], ["boolq", 0.75, 4], ["gsm", "nan", None]]
    assert history(by_type)[-1]["eval/boolq/acc"] == 0.75


def test_bench_logs_one_run_with_the_ratio_table(offline, tmp_path, monkeypatch):
    from sparsetune.bench import run_benchmark

    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path))
    times = {"full": 2.0, "lora": 1.0, "dora": 1.5}

    def fake(variant, setting, timeout):  # the runner's own ratio code on fixed figures
        return {"step_time_s": times[variant.name], "peak_memory_mb": 100.0}

    run_benchmark("lora", quick=True, rounds=2, run_variant=fake, overrides=["method.r=8"])  # a variant key
    files, by_type = offline_run(tmp_path / "bench")
    run = by_type["run"][0]
    assert run.job_type == "bench" and run.run_group == "bench-lora"
    table = tables(files)["bench/4x128"]
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert set(rows) == {"full", "lora", "dora"}
    assert rows["lora"]["step_time_s_vs_full"] == 0.5 and rows["dora"]["step_time_s_vs_full"] == 0.75
    assert rows["lora"]["step_time_s_vs_full_min"] == rows["lora"]["step_time_s_vs_full_max"] == 0.5


def test_export_is_logged_as_a_model_artifact(tmp_path, monkeypatch):
    from sparsetune.jobs import run_job
    from sparsetune.jobs.export import export_run

    overrides = ["model=tiny_llama", "data=synthetic_arith", "method=full", "eval=none",
                 "logger.backends=[jsonl,wandb]", "trainer.max_steps=1", "trainer.batch_size=4",
                 f"run_dir={tmp_path}"]
    run_job(compose(overrides), overrides)  # W&B disabled here (tests' default): no run yet
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    monkeypatch.setenv("WANDB_MODE", "offline")
    dest = export_run(str(run), "merged")
    _, by_type = offline_run(run)
    assert by_type["run"][0].job_type == "export"
    artifact = next(a for a in by_type["artifact"] if a.type == "model")
    assert artifact.name == f"{run.name}-merged"
    assert {e.path for e in artifact.manifest.contents} >= {"README.md", "config.json", "model.safetensors"}
    assert (dest / "README.md").exists()
