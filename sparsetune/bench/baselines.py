"""`sparsetune bench lora`: full fine-tuning vs LoRA vs DoRA training steps (the baselines)."""

from __future__ import annotations

from sparsetune.bench.runner import Benchmark, Setting, Variant

STEP = "sparsetune.bench.training_step:measure_train_step"


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    model = ["model=tiny_llama"] if quick else []
    common = [*model, "logger=quiet", *overrides]
    settings = [Setting("4x128", {"batch": 4, "seq": 128, "warmup": 1, "steps": 3})] if quick else [
        Setting("4x256", {"batch": 4, "seq": 256, "warmup": 2, "steps": 5}),
        Setting("1x512", {"batch": 1, "seq": 512, "warmup": 2, "steps": 5}),
    ]
    return Benchmark(
        name="lora",
        variants=[Variant("full", STEP, ["method=full", *common]),
                  Variant("lora", STEP, ["method=lora", *common]),
                  Variant("dora", STEP, ["method=dora", *common])],
        settings=settings,
        baseline="full",
        ratio_metrics=["step_time_s", "peak_memory_mb"],
    )
