"""`python -m sparsetune.diagnose.pat_profile profile|gemm`: where a PAT-pruned model's prefill time
goes, on the CPU (the tables of docs/methods/pat.md): CPU ms per projection kind for the dense and each
kept width, and GEMM throughput at each kept width. A diagnostic, not a side-by-side benchmark
(`sparsetune bench pat` is that)."""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from sparsetune.jobs.config import compose_job
from sparsetune.methods.pat import hidden_importance, prune_hidden, top_channels
from sparsetune.models import get_arch, load_model


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
    """`python -m sparsetune.diagnose.pat_profile profile|gemm`: the CPU-time tables of docs/methods/pat.md."""
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
