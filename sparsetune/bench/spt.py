"""`sparsetune bench spt`: one Llama-shaped Transformer block (d 1024, 16 heads, FFN 2816; `--quick`:
d 256, 4 heads, FFN 704), forward + backward + AdamW, fp32, batch 4 at S = 512 and 1024: full
fine-tuning (eager attention), PEFT LoRA r16 on every linear with eager and with SDPA attention, and
SPT (LoRA r16 on every linear + sparse MHA with L = S/8 + routed FFN top-2 of 4 blocks, sparse phase)
with per-key top-L selection (`spt`, the paper's) and with key blocks (`spt_block`, the default:
`method.attention_selection=block`, 32-query x 32-key blocks, top L/32 key blocks per query block), and
key blocks without the routed FFN (`spt_block_attn`: what recipe=spt_llama trains). `--variants A,B`
runs a subset (the baseline always runs).

Each variant runs in its own process. Measured: `step_time_s` (median after warm-up),
`peak_memory_mb` (CUDA: max allocated; CPU: process peak RSS), `step_memory_mb` (that peak minus
the memory in use just before the first step: what training adds to the loaded model), the attention/FFN split
`attn_time_s` / `ffn_time_s`: forward + backward of the block's attention and FFN modules alone on
the same shapes, and `saved_activation_mb` / `attn_saved_mb` / `ffn_saved_mb`: bytes autograd saves
for backward in one forward of the model / the attention / the FFN (parameters excluded, each storage
counted once) — exact and immune to machine load, unlike times and CPU RSS. The block sits between a
256-token embedding and head, so those cost next to nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparsetune.bench.runner import Benchmark, Setting, Variant
from sparsetune.bench.worker import worker_setup
from sparsetune.engine.losses import causal_lm_loss
from sparsetune.engine.measure import (
    StepTimer,
    count_parameters,
    current_memory_mb,
    peak_memory_mb,
    reset_peak_memory,
)
from sparsetune.engine.optim import build_optimizer
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.models import load_model

MEASURE = "sparsetune.bench.spt:measure_block"
ALL_LINEARS = "[q,k,v,o,gate,up,down]"
FULL_SHAPE = {"hidden": 1024, "heads": 16, "ffn": 2816}
QUICK_SHAPE = {"hidden": 256, "heads": 4, "ffn": 704}
BLOCK = ["method.attention_selection=block", "method.query_block=32", "method.key_block=32"]  # the default
PER_KEY = ["method.attention_selection=per_key"]  # the paper's selection
NO_FFN = ["method.routed_ffn=false"]  # sparse attention only: what recipe=spt_llama trains


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    common = ["logger=quiet", *overrides]
    lora = ["method=lora", "method.r=16", f"method.target_modules={ALL_LINEARS}"]
    spt = ["method=spt", "method.warmup_ratio=0.0", "method.kmeans_init=false"]
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    seqs = (128, 256) if quick else (512, 1024)
    batch = 2 if quick else 4
    steps = {"warmup": 1, "steps": 3} if quick else {"warmup": 2, "steps": 5}
    settings = [Setting(f"{batch}x{s}", {"batch": batch, "seq": s, **shape, **steps}) for s in seqs]
    return Benchmark(
        name="spt",
        variants=[Variant("full", MEASURE, ["method=full", "model.attn_implementation=eager", *common]),
                  Variant("lora_eager", MEASURE, [*lora, "model.attn_implementation=eager", *common]),
                  Variant("lora_sdpa", MEASURE, [*lora, "model.attn_implementation=sdpa", *common]),
                  Variant("spt", MEASURE, [*spt, *PER_KEY, "model.attn_implementation=sdpa", *common]),
                  Variant("spt_block", MEASURE, [*spt, *BLOCK, "model.attn_implementation=sdpa", *common]),
                  Variant("spt_block_attn", MEASURE, [*spt, *BLOCK, *NO_FFN, "model.attn_implementation=sdpa", *common])],
        settings=settings,
        baseline="lora_eager",  # the paper's baseline
        ratio_metrics=["step_time_s", "peak_memory_mb", "step_memory_mb", "saved_activation_mb", "attn_time_s", "ffn_time_s",
                       "attn_saved_mb", "ffn_saved_mb"],
        extra_ratios=[("spt", "lora_sdpa"), ("spt", "full"), ("spt_block", "lora_sdpa"), ("spt_block", "spt"),
                      ("spt_block_attn", "lora_sdpa")],
    )


MODEL_MEASURE = "sparsetune.bench.spt:measure_model"


def model_benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    """`sparsetune bench spt_model`: the whole SmolLM2-135M (its exact shape, random weights: no package
    needed, and step time / memory do not depend on the weights) at batch 1, S = 1024 (`--quick`: 256):
    LoRA r16 on every linear with SDPA (the baseline) and eager attention, and SPT with per-key and with
    block key selection."""
    common = ["model=smollm2_135m_shape", "logger=quiet", *overrides]
    lora = ["method=lora", "method.r=16", f"method.target_modules={ALL_LINEARS}"]
    spt = ["method=spt", "method.warmup_ratio=0.0", "method.kmeans_init=false"]
    seq = 256 if quick else 1024
    steps = {"warmup": 1, "steps": 2}
    return Benchmark(
        name="spt_model",
        variants=[Variant("lora_sdpa", MODEL_MEASURE, [*lora, "model.attn_implementation=sdpa", *common]),
                  Variant("lora_eager", MODEL_MEASURE, [*lora, "model.attn_implementation=eager", *common]),
                  Variant("spt", MODEL_MEASURE, [*spt, *PER_KEY, "model.attn_implementation=sdpa", *common]),
                  Variant("spt_block", MODEL_MEASURE, [*spt, *BLOCK, "model.attn_implementation=sdpa", *common]),
                  Variant("spt_block_attn", MODEL_MEASURE, [*spt, *BLOCK, *NO_FFN, "model.attn_implementation=sdpa", *common])],
        settings=[Setting(f"smollm2_1x{seq}", {"batch": 1, "seq": seq, **steps})],
        baseline="lora_sdpa",
        ratio_metrics=["step_time_s", "peak_memory_mb", "step_memory_mb", "saved_activation_mb"],
        extra_ratios=[("spt", "lora_eager"), ("spt_block", "lora_eager"), ("spt_block", "spt"),
                      ("spt_block_attn", "lora_eager")],
    )


def _find(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name.endswith(suffix):
            return module
    raise KeyError(suffix)


def build_block_model(settings: dict[str, Any], attn_implementation: str, seed: int = 0):
    """A one-block LlamaForCausalLM of the benchmark's shape (random weights, 256-token vocabulary)."""
    config = LlamaConfig(hidden_size=settings["hidden"], num_attention_heads=settings["heads"],
                         num_key_value_heads=settings["heads"], intermediate_size=settings["ffn"],
                         num_hidden_layers=1, vocab_size=256, max_position_embeddings=max(2048, settings["seq"]),
                         tie_word_embeddings=False)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def saved_mb(model: torch.nn.Module, fn) -> float:
    """MB of tensors autograd saves for backward while fn() runs (parameters excluded, storages once);
    runs backward afterwards so the graph is freed."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values()) / 2**20


def _train_steps(model, method, cfg, settings: dict[str, Any], device: str, vocab: int):
    """fwd + bwd + AdamW steps on random tokens: (median step time, {peak_memory_mb, step_memory_mb},
    step-loss fn). step_memory_mb = peak minus the memory in use before the first step (the loaded model,
    and on CPU the process itself): what training adds, which a whole-process peak RSS dilutes."""
    model.train()
    optimizer = build_optimizer(method, model, cfg.trainer)
    batch, seq, warmup = settings["batch"], settings["seq"], settings.get("warmup", 2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step_loss():
        loss_sum, n, outputs = causal_lm_loss(model, data)
        return loss_sum / n + sum(method.extra_loss(model, data, outputs).values())

    timer = StepTimer(device)
    before = current_memory_mb(device)
    reset_peak_memory(device)  # on CPU the new window starts at the RSS now (= before, give or take a page)
    for _ in range(warmup + settings.get("steps", 5)):
        with timer.step():
            step_loss().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    peak = peak_memory_mb(device)
    return timer.median(skip_warmup=warmup), {"peak_memory_mb": peak, "step_memory_mb": max(0.0, peak - before)}, step_loss


def measure_block(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    device = worker_setup(cfg, settings)
    impl = cfg.model.attn_implementation
    model = build_block_model(settings, impl, int(cfg.seed))
    method = build_method(cfg.method)
    model = method.apply(model, MethodContext.of(model)).to(device)
    step, peak, step_loss = _train_steps(model, method, cfg, settings, device, vocab=256)
    batch, seq, warmup = settings["batch"], settings["seq"], settings.get("warmup", 2)
    gen = torch.Generator().manual_seed(1)

    # attention / FFN split: forward + backward of each module alone on the block's input shape
    attn, mlp, rotary = _find(model, "layers.0.self_attn"), _find(model, "layers.0.mlp"), _find(model, "rotary_emb")
    x = torch.randn(batch, seq, settings["hidden"], generator=gen).to(device).requires_grad_(True)
    pos = rotary(x, torch.arange(seq, device=device)[None].expand(batch, -1))
    mask = None
    if impl == "eager":  # eager attention needs the causal mask spelled out (SDPA and SPT are causal by themselves)
        mask = torch.full((seq, seq), float("-inf"), device=device).triu(1)[None, None]

    split = {"saved_activation_mb": saved_mb(model, step_loss)}
    for key, fn in (("attn", lambda: attn(hidden_states=x, position_embeddings=pos, attention_mask=mask)[0]),
                    ("ffn", lambda: mlp(x))):
        split[f"{key}_saved_mb"] = saved_mb(model, lambda fn=fn: fn().square().mean())
        x.grad = None
        t = StepTimer(device)
        for _ in range(warmup + settings.get("steps", 5)):
            with t.step():
                fn().square().mean().backward()
        model.zero_grad(set_to_none=True)
        x.grad = None
        split[f"{key}_time_s"] = t.median(skip_warmup=warmup)
    trainable, total = count_parameters(model)
    return {"step_time_s": step, **peak, **split, "trainable_params": trainable,
            "total_params": total, "tokens_per_s": batch * seq / step, "dtype": "float32",
            "attn_implementation": impl, "threads": torch.get_num_threads()}


def measure_model(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    """The whole model `cfg.model` (SmolLM2-135M's shape by default): step time, peak memory and the
    MB autograd saves in one training forward."""
    device = worker_setup(cfg, settings)
    model, _ = load_model(cfg.model)
    model.config._attn_implementation = cfg.model.attn_implementation
    method = build_method(cfg.method)
    model = method.apply(model, MethodContext.of(model)).to(device)
    vocab = int(model.config.vocab_size)
    step, peak, step_loss = _train_steps(model, method, cfg, settings, device, vocab)
    saved = saved_mb(model, step_loss)
    trainable, total = count_parameters(model)
    batch, seq = settings["batch"], settings["seq"]
    return {"step_time_s": step, **peak, "saved_activation_mb": saved,
            "saved_mb_per_layer": saved / int(model.config.num_hidden_layers), "trainable_params": trainable, "total_params": total,
            "tokens_per_s": batch * seq / step, "dtype": "float32",
            "attn_implementation": cfg.model.attn_implementation, "threads": torch.get_num_threads()}
