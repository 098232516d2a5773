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

from sparsetune.bench.runner import Benchmark, Setting, Variant

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
    from sparsetune.methods.pat import hidden_importance, prune_hidden, top_channels
    from sparsetune.methods.pat.config import kept_channels_for
    from sparsetune.models import get_arch

    arch = get_arch(model)
    n = kept_channels_for(arch, method_cfg.prune_ratio, method_cfg.round_to, method_cfg.align_heads)
    keep = top_channels(hidden_importance(model, arch, kind="magnitude"), n)
    return prune_hidden(model, arch, keep, assume_zero=False)


def _clock(device):
    """A logits processor that only records when each new token's logits arrive."""
    from transformers import LogitsProcessor

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
    from transformers import LogitsProcessorList

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
    from sparsetune.bench.worker import worker_setup
    from sparsetune.engine.measure import count_parameters, latency, peak_memory_mb, reset_peak_memory
    from sparsetune.models import get_arch, load_model

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


# ---------------------------------------------------------------------------------------------- CPU profile
def _cpu_clock():
    """This thread's CPU time: other processes on a shared machine do not move it (wall time does)."""
    return time.thread_time()


@torch.no_grad()
def profile_ops(widths=(432, 405), rounds: int = 3, batch: int = 8, seq: int = 128,
                model: str = "smollm2_135m") -> dict[str, dict[str, float]]:
    """CPU ms per prefill forward (1 thread), per projection kind and the rest, for the dense and each kept width.

    Forward hooks on every nn.Linear add up thread CPU time per kind (q/k/v/o/gate/up/down/lm_head);
    `rest` = the forward minus the linears (attention core, norms, rotary, SiLU, adds: nothing there
    shrinks with the hidden width). Widths that Llama rejects (not a multiple of the 9 heads) cannot be built.
    Median over `rounds`, models interleaved.
    """
    from collections import defaultdict

    from sparsetune.jobs.config import compose_job
    from sparsetune.methods.pat import hidden_importance, prune_hidden, top_channels
    from sparsetune.models import get_arch, load_model

    torch.set_num_threads(1)
    dense, _ = load_model(compose_job([f"model={model}"]).model)
    dense.eval().requires_grad_(False)
    arch = get_arch(dense)
    score = hidden_importance(dense, arch, kind="magnitude")
    models = {str(arch.hidden_size): dense}
    models.update({str(w): prune_hidden(dense, arch, top_channels(score, w), assume_zero=False) for w in widths})
    spent: dict[str, float] = defaultdict(float)
    for model in models.values():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                kind = name.rsplit(".", 1)[-1]
                mod.register_forward_pre_hook(lambda m, a: setattr(m, "_cpu_t0", _cpu_clock()))
                mod.register_forward_hook(
                    lambda m, a, o, k=kind: spent.__setitem__(k, spent[k] + _cpu_clock() - m._cpu_t0))
    ids = torch.randint(0, dense.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    raw: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in models}
    for r in range(rounds + 1):  # round 0 is a warm-up
        for name, model in models.items():
            spent.clear()
            start = _cpu_clock()
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
            total = _cpu_clock() - start
            if r:
                raw[name]["total"].append(total)
                raw[name]["rest"].append(total - sum(spent.values()))
                for kind, value in spent.items():
                    raw[name][kind].append(value)
    return {name: {k: 1e3 * statistics.median(v) for k, v in ops.items()} for name, ops in raw.items()}


def gemm_rates(widths=(576, 512, 448, 432, 416, 405, 400, 384), tokens: int = 1024, reps: int = 12,
               inner: int = 5) -> dict[int, dict[str, float]]:
    """GFLOP/s (1 thread, thread CPU time, best of `reps`) of SmolLM2's projections at kept width K.

    A hidden-width cut makes K the input width of q (->576), k/v (->192), gate/up (->1536) and the output
    width of o (576->) and down (1536->); everything else about the GEMM is as in the dense model.
    """
    import torch.nn.functional as F

    torch.set_num_threads(1)
    shapes = {"q": ("K", 576), "kv": ("K", 192), "o": (576, "K"), "gate/up": ("K", 1536), "down": (1536, "K")}
    gen = torch.Generator().manual_seed(0)
    data = {}
    for K in widths:
        for name, (i, o) in shapes.items():
            i, o = (K if i == "K" else i), (K if o == "K" else o)
            data[K, name] = (torch.randn(tokens, i, generator=gen), torch.randn(o, i, generator=gen))
    best = {key: float("inf") for key in data}
    for _ in range(reps):
        for key, (x, w) in data.items():
            F.linear(x, w)
            start = _cpu_clock()
            for _ in range(inner):
                F.linear(x, w)
            best[key] = min(best[key], (_cpu_clock() - start) / inner)
    return {K: {name: 2 * tokens * data[K, name][1].numel() / best[K, name] / 1e9 for name in shapes} for K in widths}


def main(argv: list[str] | None = None) -> None:
    """`python -m sparsetune.bench.pat profile|gemm`: the CPU-time tables of docs/methods/pat.md."""
    import sys

    what = (argv if argv is not None else sys.argv[1:]) or ["profile"]
    if what[0] == "gemm":
        rates = gemm_rates()
        names = list(next(iter(rates.values())))
        print("GFLOP/s, 1 thread, thread CPU time, 1024 tokens")
        print("K".rjust(5), *[n.rjust(8) for n in names])
        for K, row in rates.items():
            print(f"{K:5d}", *[f"{row[n]:8.1f}" for n in names])
        return
    table = profile_ops()
    names = list(table)
    print("CPU ms per prefill forward (SmolLM2-135M, 8 x 128, 1 thread, median of 3); speed-up = dense / pruned")
    print("op".ljust(10), *[n.rjust(8) for n in names], *[("x" + n).rjust(8) for n in names[1:]])
    for op in ["total", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "rest"]:
        row = [table[n].get(op, float("nan")) for n in names]
        print(op.ljust(10), *[f"{v:8.1f}" for v in row], *[f"{row[0] / v:8.2f}" for v in row[1:]])


if __name__ == "__main__":
    main()
