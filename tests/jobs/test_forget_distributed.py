"""The `forget` job (GS-LoRA, a 2-task sequence on a tiny random ViT) in 2 gloo processes.

2 ranks x grad_accum 1 end with the weights of 1 process with grad_accum 2: a fresh DDP per task
around the new adapter, the proximal group step after each (all-reduced) optimiser step, model
selection on validation decided on rank 0 and broadcast (selection is on: eval every 2 of 4 steps),
and the merge at each task's end on every rank. Only rank 0 writes under the runs root (an audit
hook in rank 1 records every mkdir/open-for-write/rename/remove there).

Tolerance: float32, rtol 1e-4 / atol 1e-5 on the exported (merged) weights, as in
tests/engine/test_distributed.py; observed: bit-identical (`pytest -s` prints the largest difference).

This file is also the worker script the elastic launcher starts in each rank (`__main__` below).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

FORGET = ["recipe=gslora_vit", "model=tiny_vit", "data=digits", "forget.classes=[[0,1],[2]]",
          "forget.data_ratio=0.3", "logger=quiet", "trainer.threads=1", "trainer.epochs=null",
          "trainer.max_steps=4", "trainer.eval_every=2", "trainer.warmup_steps=0", "trainer.batch_size=8",
          "trainer.log_every=1", "eval.batch_size=400"]
RTOL, ATOL = 1e-4, 1e-5


def _export(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "export" / "model.safetensors"))


def test_two_ranks_forget_like_one_process_with_twice_the_accumulation(tmp_path):
    from sparsetune.jobs import run_job
    from sparsetune.jobs.config import compose_job
    from sparsetune.jobs.launch import check_distributed, elastic_run

    check_distributed(compose_job([*FORGET, "trainer.nproc=2"]), "forget")  # no longer refused

    runs = tmp_path / "runs"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"runs": str(runs), "audit": str(tmp_path / "audit"),
                                "overrides": [*FORGET, f"run_dir={runs}"]}))
    elastic_run(2, [__file__, str(spec)])
    (ddp_run,) = runs.iterdir()  # one run folder, from rank 0

    ov = [*FORGET, "trainer.grad_accum=2", f"run_dir={tmp_path / 'one'}"]
    one = run_job(compose_job(ov), ov, "forget")
    (one_run,) = (tmp_path / "one").iterdir()

    a, b = _export(ddp_run), _export(one_run)
    assert a.keys() == b.keys() and a
    worst = 0.0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
        worst = max(worst, float((a[name] - b[name]).abs().max()))
    print(f"forget (gslora, 2 tasks): max |w_2ranks - w_1process| = {worst:.1e}")

    two = json.loads((ddp_run / "summary.json").read_text())
    assert [t["forgotten"] for t in two["tasks"]] == [[0, 1], [2]] and two["steps"] == 8 == one["steps"]
    for t2, t1 in zip(two["tasks"], one["tasks"]):  # the same selection and group figures
        assert t2["val_h_mean"] == t1["val_h_mean"] and t2["per_class_test"] == t1["per_class_test"]
        assert t2["groups"]["group_norms"] == t1["groups"]["group_norms"]
    losses = [[r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for run in (ddp_run, one_run)]
    assert len(losses[0]) == 8 and losses[0] == losses[1]  # logged: each step's loss over both ranks

    audit = json.loads((tmp_path / "audit" / "rank1.json").read_text())
    assert audit["events"] == [], audit["events"][:5]
    assert audit["returned"] == {}  # rank 1 ran the whole sequence and reported nothing
    # both ranks merged the same weights at the end of each task (selection restored alike)
    rank0 = json.loads((tmp_path / "audit" / "rank0.json").read_text())
    assert len(audit["merged"]) == 2 and audit["merged"] == rank0["merged"]


# --- the worker: runs in every rank --------------------------------------------------------------------
def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared audit hook
    from write_audit import record_writes_under

    from sparsetune.jobs import run_job
    from sparsetune.jobs.config import compose_job
    from sparsetune.methods.gslora.method import GSLoRA

    merged: list[list[float]] = []  # every rank: its weights after each task's merge
    end_task = GSLoRA.end_task

    def recording_end_task(self, model):
        report = end_task(self, model)
        merged.append([float(v.double().sum()) for v in model.state_dict().values()])
        return report

    GSLoRA.end_task = recording_end_task
    events = record_writes_under(spec["runs"]) if rank != 0 else []
    returned = run_job(compose_job(spec["overrides"]), spec["overrides"], "forget")
    audit_dir = Path(spec["audit"])  # outside the runs root
    audit_dir.mkdir(parents=True, exist_ok=True)
    (audit_dir / f"rank{rank}.json").write_text(json.dumps({"events": events, "returned": returned if rank else None,
                                                            "merged": merged}))


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    _worker(sys.argv[1])
