"""`diagnose/spt_probe.py`'s codebook training (`--codebook-steps`): it trains only the codebooks, on the
q/k vectors of a dense forward, lowers the codebook loss of the chosen soft assignment, and leaves the
method's phase switches as it found them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparsetune.diagnose.spt_probe import train_codebooks
from sparsetune.methods.base import MethodContext
from sparsetune.methods.spt import SPT, SPTConfig
from sparsetune.methods.spt.pq import codebook_loss
from sparsetune.models.tiny import tiny_preset


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _job(batch_size: int = 2, items: int = 8, seq: int = 12):
    model = tiny_preset("llama", 0).eval()
    method = SPT(SPTConfig(routed_ffn=False, warmup_ratio=0.5, codebook_tokens=1024))  # every q/k row
    method.apply(model, MethodContext.of(model))
    gen = torch.Generator().manual_seed(0)
    dataset = [{"input_ids": torch.randint(0, 500, (seq,), generator=gen)} for _ in range(items)]

    def collate(rows):
        ids = torch.stack([r["input_ids"] for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    cfg = SimpleNamespace(trainer=SimpleNamespace(batch_size=batch_size))
    return SimpleNamespace(model=model, method=method, cfg=cfg, dataset=dataset, collate=collate, device="cpu")


def _rows(job, batches: int = 4):
    """The q/k vectors train_codebooks sees, gathered the same way (dense forward, state.collect)."""
    state = job.method.state
    state.collect = {}
    with torch.no_grad():
        for b in range(batches):
            batch = job.collate(job.dataset[2 * b:2 * b + 2])
            job.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows = {a.layer: torch.cat(state.collect[a.layer]) for a in job.method.attention}
    state.collect = None
    return rows


@pytest.mark.parametrize("soft", ["log", "distance"])
def test_train_codebooks_trains_only_the_codebooks_and_restores_the_phase(soft):
    job = _job()
    method = job.method
    before = {n: p.detach().clone() for n, p in job.model.named_parameters()}
    rows = _rows(job)
    start = torch.stack([codebook_loss(rows[a.layer], a.codebook, soft) for a in method.attention]).mean()
    last = train_codebooks(job, steps=30, soft=soft, lr=5e-2)
    assert last < float(start.detach())
    for n, p in job.model.named_parameters():
        assert torch.equal(p, before[n]) != n.endswith("codebook"), n
        assert p.grad is None
    assert (method.state.sparse, method.state.sparse_eval, method.state.collect) == (False, True, None)
