"""`python -m sparsetune.diagnose.spt_threads`: why SPT's per-key sparse attention falls further behind
LoRA at 2 threads than at 1 (issue #24), measured on one attention layer of SmolLM2-135M's shape
(batch 1, 9 query / 3 key-value heads, head_dim 64, S = 1024, L = S/8): forward + backward of dense
causal SDPA, of the per-key path (attention.py) and of the block path (blocks.py), each at 1 and 2
threads (median of --reps, modes interleaved), then the ops that take the time (torch.profiler, self
CPU time) of each path at each thread count. A diagnostic, not a side-by-side benchmark
(`sparsetune bench spt_model trainer.threads=1|2` is that)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sparsetune.methods.spt.attention import keys_per_query, select_top_l, sparse_attention
from sparsetune.methods.spt.blocks import block_sparse_attention, select_key_blocks

SHAPE = {"heads": 9, "kv_heads": 3, "head_dim": 64, "seq": 1024}


def _inputs(seq: int, heads: int, kv_heads: int, head_dim: int, ratio: float, block: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, seq, head_dim, generator=g)
    k = torch.randn(1, kv_heads, seq, head_dim, generator=g)
    v = torch.randn(1, kv_heads, seq, head_dim, generator=g)
    m, c = head_dim // 8, 16
    q_codes = torch.randint(0, c, (1, heads, seq, m), generator=g)
    k_codes = torch.randint(0, c, (1, kv_heads, seq, m), generator=g)
    num = keys_per_query(seq, ratio, 16)
    per_key = select_top_l(q_codes, k_codes, num, c)
    blocks = select_key_blocks(q_codes, k_codes, num, c, block, block)
    return q, k, v, per_key, blocks


def _paths(per_key, blocks, block: int, head_dim: int, groups: int):
    """Forward functions of (q, k, v) for SDPA and the two sparse paths on fixed selections."""
    scale = head_dim ** -0.5
    return {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), is_causal=True),
        "per_key": lambda q, k, v: sparse_attention(q, k, v, per_key, scale),
        "block": lambda q, k, v: block_sparse_attention(q, k, v, blocks, scale, block, block, kernel="torch"),
    }


def _step(fn, q, k, v) -> None:
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    fn(q, k, v).sum().backward()


def time_paths(reps: int, block: int, ratio: float, seq: int = SHAPE["seq"]) -> dict[str, dict[int, float]]:
    """Median seconds of forward + backward per path and thread count (paths and counts interleaved)."""
    q, k, v, per_key, blocks = _inputs(seq, SHAPE["heads"], SHAPE["kv_heads"], SHAPE["head_dim"],
                                       ratio, block)
    paths = _paths(per_key, blocks, block, q.shape[-1], q.shape[1] // k.shape[1])
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in paths}
    for rep in range(reps + 1):  # rep 0 warms up
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, fn in paths.items():
                start = time.perf_counter()
                _step(fn, q, k, v)
                if rep:
                    times[name][threads].append(time.perf_counter() - start)
    return {name: {t: statistics.median(v) for t, v in by.items()} for name, by in times.items()}


def top_ops(block: int, ratio: float, rows: int, seq: int = SHAPE["seq"]) -> dict[str, dict[int, list[tuple[str, float]]]]:
    """The `rows` ops with the most self CPU time (ms) in one forward + backward, per path and thread count."""
    q, k, v, per_key, blocks = _inputs(seq, SHAPE["heads"], SHAPE["kv_heads"], SHAPE["head_dim"],
                                       ratio, block)
    out: dict[str, dict[int, list[tuple[str, float]]]] = {}
    for name, fn in _paths(per_key, blocks, block, q.shape[-1], q.shape[1] // k.shape[1]).items():
        out[name] = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _step(fn, q, k, v)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                _step(fn, q, k, v)
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            out[name][threads] = [(e.key, e.self_cpu_time_total / 1e3) for e in events[:rows]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sparsetune.diagnose.spt_threads",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--block", type=int, default=32, help="query and key block of the block path")
    parser.add_argument("--ratio", type=float, default=0.125, help="L / S")
    parser.add_argument("--ops", type=int, default=6, help="ops listed per path and thread count")
    args = parser.parse_args()
    times = time_paths(args.reps, args.block, args.ratio)
    print(f"forward + backward, one attention layer (B 1, H {SHAPE['heads']}/{SHAPE['kv_heads']}, "
          f"D {SHAPE['head_dim']}, S {SHAPE['seq']}, L = {args.ratio:g} S), median of {args.reps}")
    print(f"{'path':<8} {'1 thread s':>11} {'2 threads s':>12} {'1->2 speed-up':>14} {'vs sdpa 1t':>11} {'vs sdpa 2t':>11}")
    for name, by in times.items():
        print(f"{name:<8} {by[1]:>11.4f} {by[2]:>12.4f} {by[1] / by[2]:>13.2f}x "
              f"{by[1] / times['sdpa'][1]:>10.2f}x {by[2] / times['sdpa'][2]:>10.2f}x")
    for name, by in top_ops(args.block, args.ratio, args.ops).items():
        for threads, ops in by.items():
            listed = ", ".join(f"{op} {ms:.1f}" for op, ms in ops)
            print(f"{name} @ {threads} thread(s), self CPU ms: {listed}")


if __name__ == "__main__":
    main()
