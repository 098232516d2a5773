"""How many bytes autograd keeps for backward in one training step of a recipe's model and method.

    python scripts/saved_tensors.py method=s2ft method.match_lora_rank=16
    python scripts/saved_tensors.py method=full trainer.lean_mlp=false
    python scripts/saved_tensors.py method=s2ft trainer.gradient_checkpointing=true

Synthetic batch of 4 x 256 tokens, every position labelled (as `sparsetune bench s2ft`); prints the
total (distinct storages, the model's own weights excluded) and the forward / backward wall time
of the last of three steps. Used for docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import time

import torch

from sparsetune.methods.base import MethodContext


def main(overrides: list[str]) -> None:
    from sparsetune.engine.grad_checkpoint import SavedTensors, enable_gradient_checkpointing
    from sparsetune.engine.lean_mlp import make_mlps_lean
    from sparsetune.engine.losses import causal_lm_loss
    from sparsetune.jobs.config import compose_job as compose
    from sparsetune.methods import build_method
    from sparsetune.models import load_model

    cfg = compose([*overrides, "logger=quiet"])
    model, _ = load_model(cfg.model)
    ctx = MethodContext.of(model)
    model = build_method(cfg.method).apply(model, ctx).train()
    if cfg.trainer.lean_mlp:
        make_mlps_lean(model)
    if cfg.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(model, ctx.arch)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (4, 256), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    # distinct storages (a tensor saved by several nodes, or views of it, counts once), the model's own
    # weights excluded; under checkpointing the blocks' kept inputs are counted instead of their internals
    counter = SavedTensors(model)
    for _ in range(3):
        t0 = time.perf_counter()
        with counter:
            loss, n, _ = causal_lm_loss(model, batch)
        t1 = time.perf_counter()
        (loss / n).backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
    print(f"{' '.join(overrides) or 'defaults'}: saved for backward {counter.bytes / 2**20:,.1f} MB; "
          f"forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
