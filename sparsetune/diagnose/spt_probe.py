"""`python -m sparsetune.diagnose.spt_probe [--routing MODE] [--batches N] OVERRIDES…`: the loss of an SPT
recipe's model before any training step (calibrated codebooks and routers, sparse path on), i.e. what
sparse attention and the routed FFN cost a pretrained model on their own; with `--run RUN --heldout N`
the held-out loss of a trained run (any method) on the first N test items.

--routing: `router` (the method as configured), `unit` (the router's blocks, every gate 1) or `oracle`
(per token the k-subset of blocks whose summed output is nearest the full FFN output, gates 1: the best
subset by output error, not necessarily by loss). Per-layer cost: `method.ffn_layers=[i]`. `--stats`: the selected gates (router)
or the oracle subset's relative output error, per layer. Loss = mean token cross-entropy on the
answer tokens of N training batches (the 5th onwards, past the calibration batches).

--codebook-steps S [--codebook-soft log|distance] [--codebook-lr LR]: before the loss, phase 1's codebook
training on its own: S Adam steps of the codebook loss (soft assignment `log`, the reference, or
`distance`) on only the codebooks, over the q/k vectors of a dense forward on the first 4 training
batches — what each soft assignment does to the sparse-attention loss.
"""

from __future__ import annotations

import argparse
import itertools
import types

import torch
import torch.nn.functional as F

from sparsetune.data.text import TextDataset
from sparsetune.engine.losses import causal_lm_loss
from sparsetune.engine.run_folder import RunFolder
from sparsetune.jobs.assemble import setup
from sparsetune.jobs.config import compose_job, load_run_config
from sparsetune.jobs.evaluate import apply_eval_overrides, from_checkpoint
from sparsetune.methods.spt.ffn import routed_ffn
from sparsetune.methods.spt.pq import SOFT_ASSIGNMENTS, codebook_loss


def oracle_blocks(mlp, x2: torch.Tensor, blocks: int, k: int) -> torch.Tensor:
    """(T, k) block ids: per token the k-subset whose summed output is nearest the dense FFN output."""
    h = mlp.act_fn(mlp.gate_proj(x2)) * mlp.up_proj(x2)
    w = mlp.down_proj.weight
    width = w.shape[1] // blocks
    parts = torch.stack([F.linear(h[:, b * width:(b + 1) * width], w[:, b * width:(b + 1) * width])
                         for b in range(blocks)], 1)  # (T, n, d)
    subsets = list(itertools.combinations(range(blocks), k))
    full = parts.sum(1)
    err = torch.stack([(full - parts[:, list(c)].sum(1)).norm(dim=-1) for c in subsets], -1)
    return torch.tensor(subsets, device=x2.device)[err.argmin(-1)]


def set_routing(method, mode: str, stats: dict | None = None) -> None:
    """Replace each routed FFN's routing by `mode`; `stats` (optional) collects per layer the selected
    gates (router mode) and the best subset's relative output error (oracle mode)."""
    for m in method.ffn:
        stock = m.route

        def route(self, x2, stock=stock):
            if mode == "router":
                top, gates = stock(x2)
                if stats is not None:
                    stats.setdefault(("gates", self.layer), []).append(gates.detach().flatten())
                return top, gates
            top = stock(x2)[0] if mode == "unit" else oracle_blocks(self.mlp, x2, self.blocks, self.top_k)
            if stats is not None and mode == "oracle":
                full = self.mlp(x2)
                kept = routed_ffn(x2, self.mlp, self.blocks, top, torch.ones(top.shape, dtype=x2.dtype))
                stats.setdefault(("error", self.layer), []).append(
                    ((full - kept).norm(dim=-1) / full.norm(dim=-1).clamp_min(1e-12)).detach().flatten())
            return top, torch.ones(top.shape, dtype=x2.dtype, device=x2.device)

        m.route = types.MethodType(route, m)


def summarise(stats: dict) -> list[str]:
    """One line per statistic: selected gates' range and per-layer std; oracle relative error per layer."""
    lines = []
    gates = {layer: torch.cat(v) for (kind, layer), v in stats.items() if kind == "gates"}
    if gates:
        allg = torch.cat(list(gates.values()))
        stds = [float(g.std()) for g in gates.values()]
        lines.append(f"selected gates: {float(allg.min()):.2f}-{float(allg.max()):.2f}, mean {float(allg.mean()):.2f}, "
                     f"per-layer std {min(stds):.2f}-{max(stds):.2f}")
    errors = {layer: float(torch.cat(v).mean()) for (kind, layer), v in stats.items() if kind == "error"}
    if errors:
        lines.append("oracle relative output error per layer: "
                     + " ".join(f"{layer}:{e:.2f}" for layer, e in sorted(errors.items())))
    return lines


def train_codebooks(job, steps: int, soft: str = "log", lr: float = 1e-2, batches: int = 4) -> float:
    """Phase 1's codebook training alone: q/k vectors (codebook_tokens per layer and batch) of a dense
    forward on the first `batches` training batches, then `steps` Adam steps of the mean codebook loss
    over the layers on only the codebooks, on one thread (multi-threaded reductions in the loss's
    backward differ in the last bits from run to run, and 200 steps grow that into different codes for
    vectors near a boundary: ±0.03 in the probe's loss). Returns the last step's loss."""
    method, bs = job.method, job.cfg.trainer.batch_size
    state = method.state
    saved = state.sparse, state.sparse_eval
    state.sparse = state.sparse_eval = False
    state.collect = {}
    job.model.eval()
    try:
        with torch.no_grad():
            for b in range(batches):
                batch = job.collate([job.dataset[i] for i in range(b * bs, (b + 1) * bs)])
                job.model(**{k: v.to(job.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")})
        rows = {a.layer: torch.cat(state.collect[a.layer]).to(a.codebook.device) for a in method.attention}
    finally:
        state.sparse, state.sparse_eval = saved
        state.collect = None
    books = [a.codebook for a in method.attention]
    opt = torch.optim.Adam(books, lr=lr)
    loss = torch.zeros(())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = torch.stack([codebook_loss(rows[a.layer], a.codebook, soft) for a in method.attention]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    for book in books:
        book.grad = None
    return float(loss.detach())


def _job(overrides: list[str], run_dir: str | None):
    """A recipe's job (method applied, calibrated, untrained) or a trained run rebuilt from its checkpoint."""
    if run_dir is None:
        cfg = compose_job(overrides)
        return setup(cfg, overrides, create_run=False)

    run = RunFolder.open(run_dir)
    job, _ = from_checkpoint(apply_eval_overrides(load_run_config(run), overrides), run)
    if job is None:
        raise SystemExit(f"spt_probe: {run_dir} has no checkpoint")
    return job


def probe(overrides: list[str], routing: str = "router", batches: int = 3, run_dir: str | None = None,
          heldout: int = 0, stats: dict | None = None, codebook: dict | None = None) -> float:
    """Mean answer-token loss; heldout > 0: on the first `heldout` test items (those `eval.limit` scores).
    codebook: keyword arguments of `train_codebooks`, run first (its last loss lands in codebook["loss"])."""
    job = _job(overrides, run_dir)
    cfg = job.cfg
    if cfg.method.name == "spt":
        set_routing(job.method, routing, stats)
        if codebook:
            codebook["loss"] = train_codebooks(job, **codebook)
    elif routing != "router" or run_dir is None or codebook:
        raise SystemExit("spt_probe: needs method=spt (e.g. recipe=spt_llama), or run=RUN of any method")
    bs = cfg.trainer.batch_size
    if heldout:
        items = TextDataset(job.splits.test[:heldout], job.tokenizer, cfg.data.max_length, cfg.data.prompt_template)
        data = [job.collate([items[i] for i in range(s, min(len(items), s + bs))]) for s in range(0, len(items), bs)]
    else:
        data = [job.collate([job.dataset[i] for i in range(b * bs, (b + 1) * bs)]) for b in range(4, 4 + batches)]
    job.model.eval()  # eval mode runs the sparse path (sparse_eval) and no dropout
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data:
            loss_sum, n, _ = causal_lm_loss(job.model, {k: v.to(job.device) for k, v in batch.items()})
            total, count = total + float(loss_sum), count + n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sparsetune.diagnose.spt_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--routing", choices=("router", "unit", "oracle"), default="router")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--run", default=None, help="a trained run folder (rebuilt from its last checkpoint)")
    parser.add_argument("--heldout", type=int, default=0, help="loss on the first N held-out test items")
    parser.add_argument("--stats", action="store_true", help="also print the selected gates (router) or the "
                        "oracle's relative output error (oracle) per layer")
    parser.add_argument("--codebook-steps", type=int, default=0, help="first train only the codebooks for "
                        "this many Adam steps on the codebook loss")
    parser.add_argument("--codebook-soft", choices=SOFT_ASSIGNMENTS, default="log",
                        help="the codebook loss's soft assignment: log = softmax(-log d) (the reference), "
                        "distance = softmax(-d)")
    parser.add_argument("--codebook-lr", type=float, default=1e-2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    stats: dict | None = {} if args.stats else None
    codebook = ({"steps": args.codebook_steps, "soft": args.codebook_soft, "lr": args.codebook_lr}
                if args.codebook_steps > 0 else None)
    loss = probe(args.overrides, args.routing, args.batches, args.run, args.heldout, stats, codebook)
    what = f"held-out ({args.heldout} items)" if args.heldout else "training-batch"
    trained = (f"; codebooks {args.codebook_steps} steps, soft {args.codebook_soft}, lr {args.codebook_lr:g}, "
               f"last codebook loss {codebook['loss']:.4f}" if codebook else "")
    print(f"{what} loss {loss:.3f} ({args.run or 'untrained'}; routing {args.routing}{trained}; "
          f"{' '.join(args.overrides)})")
    for line in summarise(stats or {}):
        print(line)


if __name__ == "__main__":
    main()
