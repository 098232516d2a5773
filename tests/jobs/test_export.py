"""`sparsetune export`: each format loads with plain transformers / PEFT and gives the logits of the
model as training left it (captured inside the train job, at the moment it writes its export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsetune import methods
from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job as compose
from sparsetune.jobs.export import export_run

torch.set_num_threads(2)
IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))


def train_capturing(tmp_path: Path, monkeypatch, model: str, method: str, *extra: str, job: str = "train"):
    """Train a tiny run; returns (run folder, logits of the training-time model on IDS). SPT also
    returns its dense logits (sparse_eval off), the reference of its merged export."""
    cls = methods.method_class(method)
    original = cls.export
    captured: dict[str, torch.Tensor] = {}

    def spy(self, model_, path, *args, **kwargs):
        was_training = model_.training
        model_.eval()
        with torch.no_grad():
            captured["logits"] = model_(input_ids=IDS).logits.float()
            if method == "spt":
                self.state.sparse_eval = False
                captured["dense"] = model_(input_ids=IDS).logits.float()
                self.state.sparse_eval = True
        model_.train(was_training)
        return original(self, model_, path, *args, **kwargs)

    monkeypatch.setattr(cls, "export", spy)
    overrides = [f"model={model}", "data=synthetic_arith", f"method={method}", "logger=quiet", "eval=none",
                 "trainer.max_steps=2", "trainer.batch_size=4", "trainer.lr=5e-2", f"run_dir={tmp_path}", *extra]
    run_job(compose(overrides), overrides, job)
    monkeypatch.setattr(cls, "export", original)
    return next(p for p in Path(tmp_path).iterdir() if p.is_dir()), captured


def stock_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def stock_base(model: str):
    from sparsetune.models.tiny import build_tiny

    cfg = compose([f"model={model}"]).model
    return build_tiny(cfg.model_type, dict(cfg.config), task=cfg.task)  # what the run started from (seed 0)


def check_card(folder: Path, method: str, fmt: str) -> None:
    card = (folder / "README.md").read_text()
    for needle in (f"method | `{method}`", "base model", "synthetic_arith", "train_loss",
                   "sparsetune export run=", f"--format {fmt}", "the run: `sparsetune ", "| training step | 2 of 2"):
        assert needle in card, needle


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_dora_merged_and_peft_give_the_training_logits(tmp_path, monkeypatch, method):
    from peft import PeftModel

    run, ref = train_capturing(tmp_path, monkeypatch, "tiny_llama", method, "method.r=4")
    merged = export_run(str(run), "merged")
    assert merged == run / "export-merged-step2" and not list((merged).glob("adapter_*"))
    torch.testing.assert_close(stock_logits(merged), ref["logits"], atol=1e-5, rtol=1e-5)
    check_card(merged, method, "merged")

    peft_dir = export_run(str(run), "peft", out=str(tmp_path / "peft"))
    model = PeftModel.from_pretrained(stock_base("tiny_llama"), str(peft_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, ref["logits"], atol=1e-5, rtol=1e-5)
    assert "library_name: peft" in (peft_dir / "README.md").read_text()
    # the merge really changed weights: a trained adapter is not the base model
    assert not torch.allclose(stock_logits(merged), stock_base("tiny_llama")(input_ids=IDS).logits, atol=1e-4)


def test_s2ft_merged_fuses_deltas_and_undoes_the_permutation(tmp_path, monkeypatch):
    from sparsetune.methods.s2ft.adapter import S2FTAdapter

    run, ref = train_capturing(tmp_path, monkeypatch, "tiny_qwen2", "s2ft", "method.o_ratio=0.5",
                               "method.d_ratio=0.3", "method.v_ratio=0.5", "method.u_ratio=0.3",
                               "method.permute=true")
    merged = export_run(str(run), "merged")
    torch.testing.assert_close(stock_logits(merged), ref["logits"], atol=1e-5, rtol=1e-5)
    adapter = export_run(str(run), "adapter")  # the method's own format, on a stock base
    assert (adapter / "adapter.safetensors").read_bytes() == (run / "export" / "adapter.safetensors").read_bytes()
    fused = S2FTAdapter.load(adapter).apply_to(stock_base("tiny_qwen2"), fuse=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=IDS).logits, ref["logits"], atol=1e-5, rtol=1e-5)
    check_card(merged, "s2ft", "merged")


def test_spt_merged_is_the_dense_model_with_lora_merged(tmp_path, monkeypatch):
    # no k-medians / router fitting: calibration is not what an export test is about (and costs seconds)
    run, ref = train_capturing(tmp_path, monkeypatch, "tiny_llama", "spt", "method.kmeans_init=false",
                               "method.router_init=false")
    merged = export_run(str(run), "merged")
    torch.testing.assert_close(stock_logits(merged), ref["dense"], atol=1e-5, rtol=1e-5)
    assert "dropped" in (merged / "README.md").read_text()  # the card says what a stock folder cannot hold
    adapter = export_run(str(run), "adapter")
    assert (adapter / "spt_adapter.safetensors").exists()
    assert "# SPT adapter" in (adapter / "README.md").read_text()  # the method's own notes are kept


def test_full_merged_and_refusals(tmp_path, monkeypatch, capsys):
    from sparsetune.cli import main

    run, ref = train_capturing(tmp_path, monkeypatch, "tiny_llama", "full")
    merged = export_run(str(run), "merged")
    torch.testing.assert_close(stock_logits(merged), ref["logits"], atol=1e-5, rtol=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['train_loss']:.4g}" in (merged / "README.md").read_text()

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["export", f"run={run}", "--format", "peft"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "PEFT cannot express method 'full'" in err
    with pytest.raises(SystemExit) as exc:  # an existing export is never overwritten
        main(["export", f"run={run}", "--format", "merged"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "exists and is not empty" in err
    with pytest.raises(SystemExit) as exc:
        main(["export", f"run={run}", "--format", "gguf"])
    assert exc.value.code == 2 and "--format must be one of merged, adapter, peft" in capsys.readouterr().err
    assert not list(run.glob(".export-*"))  # nothing half-written left behind


@pytest.mark.slow
def test_pat_merged_is_the_pruned_stock_model_of_the_run(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    run, ref = train_capturing(tmp_path, monkeypatch, "tiny_llama", "pat", "method.rank=8", "method.r=4",
                               "trainer.max_steps=4", job="prune")
    merged = export_run(str(run), "merged")
    assert AutoModelForCausalLM.from_pretrained(merged).config.hidden_size == 48  # physically pruned
    torch.testing.assert_close(stock_logits(merged), ref["logits"], atol=1e-4, rtol=1e-4)
    check_card(merged, "pat", "merged")


def test_export_and_eval_of_a_run_being_written_use_its_last_complete_checkpoint(tmp_path, capsys):
    """Issue #22 item 2: while another process holds the run folder's lock, export and eval read the last
    complete checkpoint (not a stale or half-written export/), say which step, and record nothing in it."""
    import fcntl
    import os

    from sparsetune.jobs.evaluate import evaluate_run

    overrides = ["model=tiny_llama", "data=synthetic_arith", "method=full", "logger=quiet", "eval.limit=2",
                 "trainer.max_steps=4", "trainer.save_every=1", "trainer.batch_size=4", "trainer.lr=5e-2",
                 f"run_dir={tmp_path}"]
    run_job(compose(overrides), overrides)
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    (run / "checkpoints" / "latest").write_text("step-0000003\n")  # a writer between checkpoints 3 and 4:
    before = {p.name: p.read_bytes() for p in (run / "summary.json", run / "metrics.jsonl")}  # export/ is stale
    fd = os.open(run / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the writer
    try:
        capsys.readouterr()
        merged = export_run(str(run), "merged")
        assert merged == run / "export-merged-step3"
        assert "| training step | 3 of 4, from checkpoint `step-0000003` (the run was still training)" in \
            (merged / "README.md").read_text()
        from transformers import AutoModelForCausalLM

        from sparsetune.engine.checkpoint import load_checkpoint

        step3, step4 = (load_checkpoint(run / "checkpoints" / f"step-000000{n}")["model"] for n in (3, 4))
        exported = AutoModelForCausalLM.from_pretrained(merged).state_dict()
        name = "model.layers.0.self_attn.q_proj.weight"
        torch.testing.assert_close(exported[name], step3[name])  # step 3's weights, not export/'s (step 4)
        assert not torch.equal(step3[name], step4[name])
        evaluate_run(str(run), [])
        out = capsys.readouterr()
        assert "step 3 of 4" in out.out + out.err and "still being written" in out.out + out.err
        assert {p.name: p.read_bytes() for p in (run / "summary.json", run / "metrics.jsonl")} == before
    finally:
        os.close(fd)
