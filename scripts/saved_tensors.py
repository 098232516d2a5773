"""How many bytes autograd keeps for backward in one training step of a recipe's model and method.

    python scripts/saved_tensors.py method=s2ft method.match_lora_rank=16
    python scripts/saved_tensors.py method=full trainer.lean_mlp=false

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
    from sparsetune.engine.lean_mlp import make_mlps_lean
    from sparsetune.engine.losses import causal_lm_loss
    from sparsetune.jobs.config import compose_job as compose
    from sparsetune.methods import build_method
    from sparsetune.models import load_model

    cfg = compose([*overrides, "logger=quiet"])
    model, _ = load_model(cfg.model)
    model = build_method(cfg.method).apply(model, MethodContext.of(model)).train()
    if cfg.trainer.lean_mlp:
        make_mlps_lean(model)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (4, 256), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    storages: dict[int, int] = {}  # a tensor saved by several nodes (or views of it) counts once
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # exist anyway: not counted

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    for _ in range(3):
        storages.clear()
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, n, _ = causal_lm_loss(model, batch)
        t1 = time.perf_counter()
        (loss / n).backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
    saved = sum(storages.values())
    print(f"{' '.join(overrides) or 'defaults'}: saved for backward {saved / 2**20:,.0f} MB; "
          f"forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
