"""The `forget` job is the engine's, not GS-LoRA's: a second forgetting method written only against
`ForgettingMethod` (no runner of its own) runs a task sequence end to end."""

from __future__ import annotations

import torch
from torch import nn

from sparsetune import methods
from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job
from sparsetune.methods.base import ForgetTask, ForgettingMethod

torch.set_num_threads(1)
CALLS: list[tuple] = []


class HeadOnlyForget(ForgettingMethod):
    """Toy forgetting method: retrain only the classifier head, push forgotten logits down."""

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        self.ctx = ctx
        model.requires_grad_(False)
        return model

    def start_task(self, model: nn.Module, task: ForgetTask) -> None:
        CALLS.append(("start", task.index, list(task.forgotten), list(task.earlier), len(task.retained),
                      sum(len(b["labels"]) for b in task.batches())))
        self.ctx.arch.head.requires_grad_(True)

    def extra_loss(self, model, batch, outputs):
        if "forget_pixel_values" not in batch:
            return {}
        logits = model(pixel_values=batch["forget_pixel_values"]).logits
        return {"forget": -torch.nn.functional.cross_entropy(logits, batch["forget_labels"]).clamp(max=5.0)}

    def end_task(self, model: nn.Module) -> dict:
        CALLS.append(("end",))
        self.ctx.arch.head.requires_grad_(False)
        return {"groups_surviving": 0, "groups_total": 0}


def test_a_second_forgetting_method_needs_no_runner(tmp_path, monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "head_only", f"{__name__}:HeadOnlyForget")
    CALLS.clear()
    ov = ["recipe=gslora_vit", "model=tiny_vit", "data=digits", "method=full", "method.name=head_only",
          "forget.classes=[[0,1],[2]]", "forget.data_ratio=0.5", "logger=quiet", "trainer.threads=1",
          "trainer.epochs=null", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.warmup_steps=0",
          "eval.batch_size=200", f"run_dir={tmp_path}"]
    summary = run_job(compose_job(ov), ov, "forget")
    starts = [c for c in CALLS if c[0] == "start"]
    assert [c[1:4] for c in starts] == [(1, [0, 1], []), (2, [2], [0, 1])]
    assert [c[4] for c in starts] == [8, 7] and all(c[5] > 0 for c in starts)  # retained classes, prototype data
    assert CALLS.count(("end",)) == 2
    assert [t["forgotten"] for t in summary["tasks"]] == [[0, 1], [2]]
    for key in ("acc_r", "acc_f", "acc_o", "h_mean"):
        assert key in summary
    assert summary["tasks"][0]["steps"] == 4 and summary["steps"] == 8
    assert (next(tmp_path.iterdir()) / "export" / "config.json").is_file()
