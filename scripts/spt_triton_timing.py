"""Forward+backward time of SPT's block-sparse attention: Triton kernels vs the PyTorch block path vs
dense causal SDPA (flash), on a GPU (scripts/gpu_check.sh). Writes a JSON (--out, default $OUT/...).

GPU: B=4, H=16, D=64, bf16, S in {1024, 4096}, L = S/8, blocks 64x64 and 32x32; median of --reps
after --warmup, each rep between torch.cuda.synchronize() calls. Ratios < 1 mean Triton is faster.
--smoke: tiny fp32 sizes on the CPU through Triton's interpreter (the test suite runs it so the script
cannot rot; its times mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU via TRITON_INTERPRET=1")
    p.add_argument("--out", default=str(Path(os.environ.get("OUT", ".")) / "spt_triton_timing.json"))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first defined
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsetune.methods.spt.blocks import block_sparse_attention, select_key_blocks

    if args.smoke:
        dev, dtype, b, h, d, lengths, blocks = "cpu", torch.float32, 1, 2, 16, (256,), ((16, 16),)
        reps, warmup = 1, 0
    else:
        if not torch.cuda.is_available():
            sys.exit("spt_triton_timing: needs a CUDA GPU (or --smoke)")
        dev, dtype, b, h, d, lengths, blocks = "cuda", torch.bfloat16, 4, 16, 64, (1024, 4096), ((64, 64), (32, 32))
        reps, warmup = args.reps, args.warmup
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def timed(fn, *args) -> float:
        """Median milliseconds of fn(*args) (one forward+backward), gradients cleared after each."""
        times = []
        for i in range(warmup + reps):
            sync()
            start = time.perf_counter()
            fn(*args)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
            for t in args[:3]:
                t.grad = None
        return statistics.median(times)

    def block(q, k, v, grad, idx, qb, kb, kernel):
        out = block_sparse_attention(q, k, v, idx, q.shape[-1] ** -0.5, qb, kb, kernel=kernel)
        if grad is not None:
            out.backward(grad)
        return out

    def sdpa(q, k, v, grad):
        if dev == "cuda":  # flash, as a trained model would run dense attention
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)

    gen = torch.Generator(dev).manual_seed(0)
    rows = []
    for s in lengths:
        q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=dtype, generator=gen).requires_grad_() for _ in range(3))
        grad = torch.randn(b, h, s, d, device=dev, dtype=dtype, generator=gen)
        codes = [torch.randint(0, 16, (b, h, s, d // 8), device=dev, generator=gen) for _ in range(2)]
        for qb, kb in blocks:
            idx = select_key_blocks(codes[0], codes[1], s // 8, 16, qb, kb)
            with torch.no_grad():
                diff = block(q, k, v, None, idx, qb, kb, "triton").float() - block(q, k, v, None, idx, qb, kb, "torch").float()
            row = {"S": s, "L": s // 8, "query_block": qb, "key_block": kb, "slots": int(idx.shape[-1]),
                   "triton_ms": timed(block, q, k, v, grad, idx, qb, kb, "triton"),
                   "torch_block_ms": timed(block, q, k, v, grad, idx, qb, kb, "torch"),
                   "sdpa_ms": timed(sdpa, q, k, v, grad), "max_abs_diff_vs_torch_block": float(diff.abs().max())}
            row["triton_vs_sdpa"] = row["triton_ms"] / row["sdpa_ms"]
            row["triton_vs_torch_block"] = row["triton_ms"] / row["torch_block_ms"]
            rows.append(row)
            print(f"S={s} L={s // 8} blocks {qb}x{kb} ({row['slots']} slots): triton {row['triton_ms']:.2f} ms, "
                  f"torch block {row['torch_block_ms']:.2f} ms, sdpa {row['sdpa_ms']:.2f} ms; "
                  f"triton/sdpa {row['triton_vs_sdpa']:.2f}x, triton/torch-block {row['triton_vs_torch_block']:.2f}x, "
                  f"max |diff| {row['max_abs_diff_vs_torch_block']:.2e}", flush=True)
    report = {"smoke": args.smoke, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)",
              "dtype": str(dtype).removeprefix("torch."), "B": b, "H": h, "D": d, "reps": reps, "warmup": warmup,
              "statistic": "median ms of forward+backward", "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
