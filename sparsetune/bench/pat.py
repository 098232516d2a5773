"""`sparsetune bench pat`: inference speed and size of PAT-pruned models against the dense model.

Variants `dense`, `pruned_20`, `pruned_25`, `pruned_30` of one model (SmolLM2-135M with its real weights;
`--quick`: tiny_llama), each in its own process. Speed needs no training: a pruned variant removes the
number of hidden channels PAT's export would (`method.prune_ratio` with PAT's rounding), chosen by weight
magnitude, through the same `prune_hidden` PAT's export uses, so it has exactly the shapes of a PAT
export. Measured:
- `prefill_time_s`: one forward over batch x seq prompt tokens that builds the KV cache and computes
  logits for the last position only (`logits_to_keep=1`), as generation's prefill does;
  `prefill_tokens_per_s_vs_dense` is the prefill speed-up.
- `prefill_cpu_s` (CPU only): the process's CPU time for the same forward (median of the timed calls). On a
  shared machine wall time moves with other people's load; at `trainer.threads=1` CPU time does not, so
  its ratio is the one a rerun reproduces (with more threads it also counts the threads' barrier spinning).
- `decode_tokens_per_s`: greedy `generate` of exactly `new_tokens` tokens with the KV cache; the clock
  runs from the first sampled token (end of prefill) to the last, so prefill is not in it.
- `params` (tied embeddings counted once), `block_params` (the decoder blocks: what sets FLOPs per token),
  `weights_mb`, `peak_memory_mb` (CUDA: allocated; CPU: process peak RSS while measuring).
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sparsetune.bench.runner import Benchmark, Setting, Variant
from sparsetune.bench.worker import worker_setup
from sparsetune.engine.measure import count_parameters, latency, peak_memory_mb, reset_peak_memory
from sparsetune.methods.pat import hidden_importance, prune_hidden, top_channels
from sparsetune.methods.pat.channels import kept_channels_for
from sparsetune.models import get_arch, load_model

MEASURE = "sparsetune.bench.pat:measure_inference"
RATIOS = (20, 25, 30)


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    model = ["model=tiny_llama"] if quick else []
    common = [*model, "logger=quiet", *overrides]
    variants = [Variant("dense", MEASURE, ["method=full", *common])]
    variants += [Variant(f"pruned_{p}", MEASURE, ["method=pat", f"method.prune_ratio={p / 100}", *common])
                 for p in RATIOS]
    if quick:
        settings = [Setting("2x32", {"batch": 2, "seq": 32, "new_tokens": 8, "warmup": 1, "iters": 2, "gen_iters": 1})]
    else:
        settings = [Setting("8x128", {"batch": 8, "seq": 128, "new_tokens": 64, "warmup": 2, "iters": 5,
                                      "gen_iters": 3})]
    return Benchmark(
        name="pat",
        variants=variants,
        settings=settings,
        baseline="dense",
        ratio_metrics=["prefill_time_s", "prefill_cpu_s", "prefill_tokens_per_s", "decode_tokens_per_s", "params",
                       "block_params", "peak_memory_mb"],
    )


def pruned_like_pat(model, method_cfg):
    """The dense model cut to PAT's kept count for `method_cfg`, channels by weight magnitude (no training)."""
    arch = get_arch(model)
    n = kept_channels_for(arch, method_cfg.prune_ratio, method_cfg.round_to, method_cfg.align_heads)
    keep = top_channels(hidden_importance(model, arch, kind="magnitude"), n)
    return prune_hidden(model, arch, keep, assume_zero=False)


def _clock(device):
    """A logits processor that only records when each new token's logits arrive."""
    class Clock(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize(device)
            self.times.append(time.perf_counter())
            return scores

    return Clock()


def _decode(model, ids, mask, new_tokens: int, device) -> tuple[float, float]:
    """(seconds from the first to the last new token, seconds of the whole generate call)."""
    clock = _clock(device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, logits_processor=LogitsProcessorList([clock]),
                         pad_token_id=model.generation_config.pad_token_id or 0)
    total = time.perf_counter() - start
    if out.shape[1] - ids.shape[1] != new_tokens or len(clock.times) != new_tokens:
        raise RuntimeError(f"generate produced {out.shape[1] - ids.shape[1]} tokens, expected {new_tokens}")
    return clock.times[-1] - clock.times[0], total


def measure_inference(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    device = worker_setup(cfg, settings)
    model, _ = load_model(cfg.model)
    hidden_before = model.config.get_text_config().hidden_size
    if cfg.method.name == "pat":
        dense, model = model, pruned_like_pat(model, cfg.method)
        del dense
        gc.collect()
    model = model.to(device).eval()
    model.requires_grad_(False)
    arch = get_arch(model)
    _, params = count_parameters(model)
    _, block_params = count_parameters(torch.nn.ModuleList([b.module for b in arch.blocks]))
    weights_mb = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()) / 2**20

    batch, seq, new_tokens = settings["batch"], settings["seq"], settings["new_tokens"]
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    cpu_times: list[float] = []

    def prefill_call():
        start = time.process_time()
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        cpu_times.append(time.process_time() - start)

    reset_peak_memory(device)
    with torch.inference_mode():
        prefill = latency(prefill_call, warmup=settings["warmup"], iters=settings["iters"], device=device)
        _decode(model, ids, mask, min(4, new_tokens), device)  # warm-up of the generate path
        runs = [_decode(model, ids, mask, new_tokens, device) for _ in range(settings["gen_iters"])]
    decode_s = statistics.median(r[0] for r in runs)
    cpu = {} if str(device).startswith("cuda") else {"prefill_cpu_s": statistics.median(cpu_times[settings["warmup"]:])}
    return {
        "hidden_size": arch.hidden_size,
        "pruned_fraction": round(1 - arch.hidden_size / hidden_before, 4),
        "prefill_time_s": prefill["median"],
        **cpu,
        "prefill_tokens_per_s": batch * seq / prefill["median"],
        "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s,
        "generate_time_s": statistics.median(r[1] for r in runs),
        "params": params,
        "block_params": block_params,
        "weights_mb": weights_mb,
        "peak_memory_mb": peak_memory_mb(device),
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
