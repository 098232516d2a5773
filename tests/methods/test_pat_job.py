"""`sparsetune prune` end to end on tiny models: PAT and the prune-then-LoRA baseline through the engine.

The run folder's export must be a stock HF model equal to what was evaluated, and summary.json must
carry the size figures and (when asked) the unpruned baseline run's results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparsetune.errors import ConfigError
from sparsetune.jobs import run_job
from sparsetune.jobs.assemble import setup
from sparsetune.jobs.config import compose_job as compose
from sparsetune.jobs.train import train
from sparsetune.methods.base import MethodContext
from sparsetune.methods.pat import hidden_importance, top_channels
from sparsetune.models import get_arch, load_model

torch.set_num_threads(1)

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "trainer.batch_size=4", "trainer.warmup_steps=1",
        "trainer.lr=5e-3", "trainer.threads=1", "trainer.save_every=0", "eval.limit=4"]
PAT = ["method=pat", "method.rank=8", "method.r=4", "method.alpha=8", "method.dropout=0.0"]
IDS = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))


def run(overrides: list[str]):
    """setup + train, as `run_job` does, keeping the live job (method, trained model) for checks."""
    job = setup(compose(overrides), overrides, "prune")
    return job, train(job)


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_pat_prune_job_exports_the_evaluated_model_and_records_the_baseline(tmp_path):
    lora_ov = [*TINY, f"run_dir={tmp_path / 'lora'}", "method=lora", "trainer.max_steps=2"]
    lora_summary = run_job(compose(lora_ov), lora_ov)
    lora_run = next((tmp_path / "lora").iterdir())

    job, summary = run([*TINY, *PAT, f"run_dir={tmp_path / 'pat'}", "trainer.max_steps=6",
                        f"method.baseline_run={lora_run}"])
    folder = job.run.path
    saved = json.loads((folder / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert (saved["kept_hidden"], saved["hidden_size"]) == (48, 64) and saved["pat_hard"] == 1.0
    assert saved["params_before"] == 106_816  # tiny_llama, tied embeddings counted once
    assert saved["params_after"] == 80_112 and saved["params_ratio"] == pytest.approx(0.75, abs=1e-3)
    weights = (folder / "export" / "model.safetensors").stat().st_size / 2**20
    assert saved["export_weights_mb"] == pytest.approx(weights, abs=1e-3) and saved["export_size_mb"] > weights
    assert saved["eval"]["average"]["n"] == 8
    base = saved["baseline"]
    assert base["run"] == str(lora_run.resolve()) and base["method"] == "lora"
    assert base["eval"] == lora_summary["eval"] and base["total_params"] == lora_summary["total_params"]
    # per-step logs carry the scalar figures only, not the end-of-run baseline block
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert all("baseline" not in r for r in records)
    assert [r["kept_hidden"] for r in records if "loss" in r] == [48] * 6

    export = folder / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["hidden_size"] == 48 and config["head_dim"] == 16 and config["tie_word_embeddings"]
    loaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    assert sum(p.numel() for p in loaded.parameters()) == saved["params_after"]
    assert (export / "tokenizer.json").exists()
    evaluated = job.method.prepare_for_eval(job.model)  # the model the held-out eval scored
    torch.testing.assert_close(logits(loaded), logits(evaluated), rtol=1e-5, atol=1e-5)
    # ... and it is the masked training model, folded (PAT's defining property, here after real training)
    torch.testing.assert_close(logits(loaded), logits(job.model), rtol=1e-4, atol=1e-4)


def test_bad_baseline_run_fails_before_a_run_folder_exists(tmp_path):
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "nope", "no summary.json"), (tmp_path / "empty", "no summary.json")):
        ov = [*TINY, *PAT, f"run_dir={tmp_path / 'runs'}", f"method.baseline_run={target}"]
        with pytest.raises(ConfigError, match=f"method.baseline_run: {message}"):
            run_job(compose(ov), ov, job="prune")
    (tmp_path / "empty" / "summary.json").write_text(json.dumps({"method": "lora", "eval": {}}))
    with pytest.raises(ConfigError, match="has no eval results"):
        run_job(compose(ov), ov, job="prune")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_prune_then_lora_keeps_n_top_channels_and_exports_the_trained_model(tmp_path, importance):
    ov = [*TINY, "method=prune_lora", f"method.importance={importance}", "method.r=4", "method.alpha=8",
          "method.dropout=0.0", "method.calibration_batches=2", "method.prune_ratio=0.3",
          f"run_dir={tmp_path}", "trainer.max_steps=3"]
    cfg = compose(ov)
    dense, tokenizer = load_model(cfg.model)  # the same seeded random weights the job starts from
    job, summary = run(ov)
    method = job.method
    # 64 * 0.7 = 44.8 -> 45 channels, rounded to the 4 heads transformers requires of Llama: 44 (as PAT would)
    assert summary["kept_hidden"] == 44 and method.keep.numel() == 44
    batches = job.ctx.calibration_batches(2) if importance == "activation" else None
    expect = top_channels(hidden_importance(dense, get_arch(dense), batches, importance), 44)
    assert torch.equal(method.keep, expect)
    # one hidden channel owns 1669 weights in tiny_llama: embedding column (512, tied head) + final norm +
    # per block q 64 + k 32 + v 32 + gate 128 + up 128 + o 64 + down 128 + 2 norms = 578, x 2 blocks
    assert (summary["params_before"], summary["params_after"]) == (106_816, 106_816 - 20 * 1669)
    lora_b = [p for n, p in job.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA really trained: the merge is not a no-op
    assert all(not p.requires_grad for n, p in job.model.named_parameters() if "lora_" not in n)

    export = job.run.path / "export"
    info = json.loads((export / "pat.json").read_text())
    assert info["method"] == "prune_lora" and info["keep_index"] == expect.tolist()
    loaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    assert loaded.config.hidden_size == 44 and sum(p.numel() for p in loaded.parameters()) == summary["params_after"]
    torch.testing.assert_close(logits(loaded), logits(job.model), rtol=1e-5, atol=1e-5)  # PEFT forward, unmerged
    assert method.load_export(dense, export) is not None


def test_prune_then_lora_resume_rebuilds_the_same_channels():
    from sparsetune.methods.pat.baseline import PruneLoRA, PruneLoRAConfig

    cfg = compose(["model=tiny_llama"])
    keep = list(range(0, 64, 2)) + [1, 3, 5, 7, 9, 11, 13, 15]  # 40 arbitrary channels, not the magnitude top
    method = PruneLoRA(PruneLoRAConfig(prune_ratio=0.375, r=4))
    method.load_state_dict({"keep": sorted(keep), "n_keep": 40})  # before apply(), as the engine resumes
    model, _ = load_model(cfg.model)
    method.apply(model, MethodContext.of(model))
    assert method.keep.tolist() == sorted(keep) and method.state_dict()["keep"] == sorted(keep)
    other = PruneLoRA(PruneLoRAConfig(prune_ratio=0.25, r=4))
    other.load_state_dict({"keep": sorted(keep), "n_keep": 40})
    model, _ = load_model(cfg.model)
    with pytest.raises(ConfigError, match="checkpoint keeps 40 hidden channels"):
        other.apply(model, MethodContext.of(model))


def test_pat_recipes_compose_with_the_same_kept_count():
    from sparsetune.methods import method_class
    from sparsetune.methods.pat.channels import kept_channels_for

    pat, base = compose(["recipe=pat_llama"]), compose(["recipe=pat_baseline_llama"])
    assert pat.method.name == "pat" and base.method.name == "prune_lora"
    assert "prune" in method_class("prune_lora").jobs
    for key in ("prune_ratio", "round_to", "align_heads", "r", "alpha"):
        assert pat.method[key] == base.method[key], key
    for key in ("max_steps", "batch_size", "lr", "schedule"):
        assert pat.trainer[key] == base.trainer[key], key
    assert compose(["recipe=pat_llama2_7b"]).method.rank == 200
    model, _ = load_model(compose(["model=tiny_qwen2"]).model)
    assert kept_channels_for(get_arch(model), 0.25, 8) == 48
    assert Path("recipes/method/prune_lora.yaml").exists()
