"""The thread-scaling diagnostic (docs/methods/spt.md, "Thread scaling") runs and compares like with like:
all three paths compute the same attention when L covers every key."""

from __future__ import annotations

import torch

from sparsetune.diagnose import spt_threads


def test_paths_agree_when_every_key_is_kept_and_the_timer_reports_each_thread_count():
    q, k, v, per_key, blocks = spt_threads._inputs(64, 4, 2, 16, ratio=1.0, block=16)
    outs = {name: fn(q, k, v) for name, fn in spt_threads._paths(per_key, blocks, 16, 16, 2).items()}
    assert torch.allclose(outs["per_key"], outs["sdpa"], atol=1e-5)
    assert torch.allclose(outs["block"], outs["sdpa"], atol=1e-5)
    threads = torch.get_num_threads()
    try:
        times = spt_threads.time_paths(reps=1, block=16, ratio=0.125, seq=64)
        ops = spt_threads.top_ops(block=16, ratio=0.125, rows=2, seq=64)
    finally:
        torch.set_num_threads(threads)
    assert set(times) == set(ops) == {"sdpa", "per_key", "block"}
    assert all(set(by) == {1, 2} and min(by.values()) > 0 for by in times.values())
    assert all(len(rows) == 2 for by in ops.values() for rows in by.values())
