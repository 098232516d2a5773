"""The declared experiments behind reports/REPRODUCE.md: one `Run` per table row (a sparsetune
command, its seeds, and which summary.json figures become columns), one `Bench` per efficiency table.

The full plan is sized to finish within a few hours on a 2-core CPU (two lanes of one thread each for
the training rows, then the benches alone): short fine-tunes (32-60 steps), 50 held-out items per
commonsense task and 30 GSM8K problems, two seeds per accuracy figure. QUICK mode runs the same list
with tiny step counts and eval limits (a smoke test of the whole chain, ~10 min on 2 CPU cores); its
numbers exercise the report, they are not results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsetune.data.benchmarks import SUITES

SEEDS = (0, 1)

# overrides appended in QUICK mode, by the kind of model a command trains
QUICK_TEXT = ("trainer.max_steps=3", "trainer.warmup_steps=1", "trainer.batch_size=4", "trainer.save_every=0",
              "data.train_size=48", "data.val_size=0", "data.test_size=12", "eval.batch_size=12")
QUICK_SEEDS = (0,)
QUICK_VISION_FORGET = ("forget.data_ratio=0.02", "trainer.epochs=1", "trainer.eval_every=0")
QUICK_VISION_TRAIN = ("trainer.max_steps=4", "trainer.warmup_steps=1", "trainer.save_every=0", "trainer.batch_size=32")
QUICK_VISION_EVAL = ("eval.limit=200",)


@dataclass(frozen=True)
class Run:
    """One row of a table: `sparsetune <argv>` once per seed (seed=k appended)."""

    table: str
    name: str
    argv: tuple[str, ...]
    columns: dict[str, str]  # column label -> dotted path in summary.json
    quick: tuple[str, ...] = ()
    seeds: tuple[int, ...] = SEEDS
    # rows from a list or dict inside summary.json (GS-LoRA's per-task figures, EViT's keep-rate points):
    # then `columns` are paths inside each item
    expand: str | None = None
    in_quick: bool = True  # QUICK mode runs this row (once, with seed 0)
    # a second command on the finished run folder ("{run}"), e.g. scoring EViT keep rates with
    # `sparsetune eval run={run}`; done once summary.json has `then_key`
    then: tuple[str, ...] = ()
    then_key: str | None = None

    @property
    def key(self) -> str:
        return f"{self.table}/{self.name}"


@dataclass(frozen=True)
class Bench:
    """`sparsetune bench <argv> --out FILE`: one efficiency table, ratios against the bench's baseline."""

    table: str
    name: str
    argv: tuple[str, ...]
    quick: tuple[str, ...] = ("--quick", "--rounds", "1")
    full: tuple[str, ...] = ("--rounds", "2")
    metrics: tuple[str, ...] = ()  # variant metrics shown (their _vs_<baseline> ratios are added)
    in_quick: bool = True  # QUICK mode runs this bench (with `quick`)

    @property
    def key(self) -> str:
        return f"{self.table}/{self.name}"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    paper: str  # markdown: the paper's own figures to read ours against (../shared/methods/*.md)
    reading: str = ""  # how to read the rows; the report adds the measured comparison
    plot: dict = field(default_factory=dict)  # {"x": column, "y": column} for a PNG, optional
    # measured differences the reading quotes: (row A, row B, column) -> "A − B = …"
    compare: tuple[tuple[str, str, str], ...] = ()


# Every S²FT row is scored on the held-out items of both data sets (the one it trained on: in-domain;
# the other: what it kept, the paper's generalisation claim), through lm-eval redirect tasks that
# scripts/repro/tasks.py writes from those data sets' held-out rows (eval.include_path): lm-eval's stock
# task on exactly those rows, renamed heldout_<task> so that no name clashes with a stock task.
# label -> (data config, lm-eval tasks it holds out); the tasks are what the data configs name
# (commonsense_mix: tasks=[s2ft_commonsense], arithmetic: tasks=[gsm8k]), checked when tasks.py writes them
CROSS_DATA = {"commonsense": ("commonsense_mix", tuple(SUITES["s2ft_commonsense"])),
              "arithmetic": ("arithmetic", ("gsm8k",))}
# held-out items per task: 8 x 50 commonsense items (multiple choice, cheap) and 30 GSM8K problems (each
# generates up to 256 tokens); QUICK: a dozen per commonsense task, a handful of GSM8K problems
CROSS_TEST_SIZE = {"full": {"commonsense": 50, "arithmetic": 30}, "quick": {"commonsense": 12, "arithmetic": 4}}
CROSS_PREFIX = "heldout_"


def cross_task(name: str) -> str:
    """The include folder's name for lm-eval task `name` on its held-out rows."""
    return f"{CROSS_PREFIX}{name}"


CROSS_TASKS = {label: tuple(cross_task(t) for t in tasks) for label, (_, tasks) in CROSS_DATA.items()}
CROSS_TASK_NAMES = tuple(t for tasks in CROSS_TASKS.values() for t in tasks)
# "on commonsense": sparsetune's "average" is, per metric, the unweighted mean over the scored tasks that
# report it (eval/lm.py with_average); of the tasks scored here only the eight commonsense ones report
# `acc` (gsm8k reports exact_match alone), so average.acc is the paper's 8-task mean accuracy.
# "on GSM8K": lm-eval's gsm8k reports exact_match under two filters; the summary keeps the first
# (eval/lm.py _metrics), strict-match: the number after "#### ", the answer format the training teaches.
S2FT_COLS = {"on commonsense": "eval.average.acc", "on GSM8K": f"eval.{cross_task('gsm8k')}.exact_match",
             "trainable params": "trainable_params", "train loss": "train_loss", "step time (s)": "step_time_s",
             "peak memory (MB)": "peak_memory_mb"}
CROSS_EVAL = ("eval.include_path={tasks}", f"eval.tasks=[{','.join(CROSS_TASK_NAMES)}]")
FORGET = {"task": "task", "classes": "classes", "Acc_r": "acc_r", "Acc_f": "acc_f", "Acc_o": "acc_o", "H": "h_mean",
          "groups kept": "groups_surviving", "groups": "groups_total"}

# trained on: the commonsense mix (S²FT's eight tasks, lm-eval's context + gold answer) and arithmetic
# (GSM-Symbolic problems with worked answers from reasoning-gym; held out: real GSM8K test problems)
S2FT_TRAIN_ON = ("commonsense", "arithmetic")
S2FT_STEPS = ("trainer.max_steps=60", "trainer.warmup_steps=6")

S2FT_METHODS = {
    "full FT": ("recipe=full_llama",),
    "LoRA r8": ("recipe=lora_llama", "method.r=8"),
    "DoRA r8": ("recipe=dora_llama", "method.r=8"),
    "S²FT": ("recipe=s2ft_llama",),
}


def _s2ft_runs() -> list[Run]:
    runs = [Run("s2ft", "base model (untuned)", ("eval", "recipe=s2ft_llama", *CROSS_EVAL), S2FT_COLS,
                quick=("eval.batch_size=12",), seeds=(0,))]
    for label in S2FT_TRAIN_ON:
        data = CROSS_DATA[label][0]
        # the training row holds out exactly the items tasks.py scores (same data, split_seed and
        # test_size), so none of them is trained on
        held = tuple(f"data.test_size={CROSS_TEST_SIZE[mode][label]}" for mode in ("full", "quick"))
        for method, argv in S2FT_METHODS.items():
            runs.append(Run("s2ft", f"{method} · trained on {label}",
                            ("train", *argv, f"data={data}", held[0], *S2FT_STEPS, *CROSS_EVAL),
                            S2FT_COLS, quick=(*QUICK_TEXT, held[1]), in_quick=label == "arithmetic"))
    return runs


PAT_COLS = {"accuracy": "eval.average.acc", "kept hidden": "kept_hidden", "params after": "params_after",
            "params ratio": "params_ratio", "train loss": "train_loss"}
PAT_QUICK = (*QUICK_TEXT, "trainer.save_every=0")
# every PAT-table row: PAT's seven commonsense tasks, 32 steps at batch 4 (the soft-mask phase is the first
# third), 50 held-out items per task
PAT_SIZE = ("data=pat_commonsense", "trainer.max_steps=32", "trainer.warmup_steps=3", "trainer.batch_size=4",
            "eval.limit=50")


def _pat_runs() -> list[Run]:
    lora = ("train", "recipe=lora_llama", "method.r=20",
            "method.target_modules=[q,k,v,o,gate,up,down]", "trainer.lr=2.0e-4", "trainer.schedule=cosine")
    runs = [Run("pat", "LoRA (unpruned)", (*lora, *PAT_SIZE), {"accuracy": "eval.average.acc", "train loss": "train_loss"},
                quick=QUICK_TEXT)]
    for ratio in (0.2, 0.25, 0.3):
        pct = int(round(ratio * 100))
        runs.append(Run("pat", f"PAT {pct}%", ("prune", "recipe=pat_llama", f"method.prune_ratio={ratio}", *PAT_SIZE),
                        PAT_COLS, quick=PAT_QUICK, in_quick=pct == 25))
    # the paper's prune-then-fine-tune baseline sits at 25% (LLM-Pruner, SliceGPT)
    runs.append(Run("pat", "prune→LoRA 25%", ("prune", "recipe=pat_baseline_llama", "method.prune_ratio=0.25",
                                               *PAT_SIZE), PAT_COLS, quick=PAT_QUICK))
    runs.append(Run("pat", "PAT 25% · frozen mask", ("prune", "recipe=pat_llama", "method.freeze_mask=true", *PAT_SIZE),
                    PAT_COLS, quick=PAT_QUICK))
    runs.append(Run("pat", "PAT 25% · no identity loss", ("prune", "recipe=pat_llama", "method.identity_weight=0",
                                                           *PAT_SIZE), PAT_COLS, quick=PAT_QUICK))
    return runs


def _gslora_runs() -> list[Run]:
    return [Run("gslora", m, ("forget", "recipe=gslora_vit", "forget.sequence=random:4x2", f"method={m}"), FORGET,
                quick=QUICK_VISION_FORGET, expand="tasks")
            for m in ("gslora", "gslora_pp", "gslora_nogs", "gslora_full", "gslora_retrain")]


EVIT_COLS = {"keep rate": "keep_rate", "top-1": "top1", "images/s": "images_per_s", "speed-up": "speedup",
             "GMACs": "gmacs", "tokens": "tokens"}


def _evit_runs() -> list[Run]:
    return [Run("evit", "off the shelf (no fine-tuning)", ("eval", "recipe=evit_vit", "method.train=false"), EVIT_COLS,
                quick=QUICK_VISION_EVAL, expand="eval_points", seeds=(0,)),
            Run("evit", "fine-tuned at keep 0.7", ("train", "recipe=evit_vit"), EVIT_COLS,
                quick=(*QUICK_VISION_TRAIN, *QUICK_VISION_EVAL), expand="eval_points",
                then=("eval", "run={run}", "eval.points=[1.0,0.9,0.8,0.7,0.6,0.5]"), then_key="eval_points")]


SPT_COLS = {"accuracy": "eval.average.acc", "train loss": "train_loss", "final loss": "final_step_loss",
            "step time (s)": "step_time_s", "peak memory (MB)": "peak_memory_mb"}


def _spt_runs() -> list[Run]:
    # the commonsense mix (S²FT's eight tasks), 50 held-out items per task
    short = ("data=commonsense_mix", "trainer.max_steps=40", "trainer.warmup_steps=4", "eval.limit=50")
    return [
        Run("spt", "LoRA r16, all linears", ("train", "recipe=lora_llama", "method.target_modules=[q,k,v,o,gate,up,down]",
                                              *short), SPT_COLS, quick=QUICK_TEXT),
        Run("spt", "SPT (recipe)", ("train", "recipe=spt_llama", *short), SPT_COLS, quick=QUICK_TEXT),
        Run("spt", "SPT with the routed FFN (top-3 of 4, ste)", ("train", "recipe=spt_llama", "method.routed_ffn=true", *short),
            SPT_COLS, quick=QUICK_TEXT),
    ]


RUNS: list[Run] = [*_s2ft_runs(), *_pat_runs(), *_gslora_runs(), *_evit_runs(), *_spt_runs()]

BENCHES: list[Bench] = [
    Bench("s2ft_bench", "bench s2ft", ("s2ft",), metrics=("step_time_s", "peak_memory_mb")),
    Bench("pat_bench", "bench pat", ("pat",), metrics=("prefill_tokens_per_s", "decode_tokens_per_s")),
    Bench("evit_bench", "bench evit", ("evit",), metrics=("images_per_s", "gmacs")),
    Bench("spt_bench", "bench spt", ("spt",), metrics=("step_time_s", "attn_time_s", "ffn_time_s", "saved_activation_mb")),
    Bench("spt_bench", "bench spt_model", ("spt_model",), metrics=("step_time_s", "saved_activation_mb", "peak_memory_mb"),
          in_quick=False),
]

TABLES: list[Table] = [
    Table("s2ft", "S²FT vs full FT / LoRA / DoRA on SmolLM2-135M",
          paper="S²FT paper (LLaMA-7B…8B, commonsense170k / math10k): S²FT +4.6 points over LoRA on commonsense "
                "and +1.3 on arithmetic, +11.5% over full FT out of domain; up to 3× less training memory and "
                "1.5–2.7× lower latency than full FT, about 10% better than LoRA on both.",
          reading="Each row trains on one data set (60 steps at batch 8) and is scored on the held-out items of "
                  "both: the column of its own data set is in-domain accuracy, the other shows what it kept or "
                  "lost against the untuned model (the paper's generalisation claim). Commonsense "
                  "(data=commonsense_mix): the paper's eight tasks (BoolQ, PIQA, Social IQa, HellaSwag, WinoGrande, "
                  "ARC-e, ARC-c, OpenBookQA), trained on lm-eval's context + gold answer; \"on commonsense\" is the "
                  "mean over the eight of lm-eval's zero-shot acc on "
                  f"{CROSS_TEST_SIZE['full']['commonsense']} held-out items each, chance ≈0.354 (the mean of 1/2, "
                  "1/2, 1/3, 1/4, 1/2, 1/4, 1/4, 1/4). Arithmetic (data=arithmetic): GSM-Symbolic word problems with "
                  "worked answers generated by reasoning-gym in GSM8K's format (the paper's Math10K → GSM8K protocol "
                  "at CPU scale); \"on GSM8K\" is lm-eval's gsm8k exact match, zero-shot, on "
                  f"{CROSS_TEST_SIZE['full']['arithmetic']} real GSM8K test problems, strict-match filter (the "
                  "number after \"#### \", the format the training teaches), so one problem is "
                  f"{1 / CROSS_TEST_SIZE['full']['arithmetic']:.3f}. At 135M parameters expect the commonsense mean "
                  "near chance and GSM8K near zero: differences of a few points are noise (the ± column says how "
                  "much). Trainable parameters: LoRA/DoRA r8 vs S²FT (o_ratio 0.1, d_ratio 0.03) are matched to "
                  "within the column shown.",
          plot={"bars": ["on commonsense", "on GSM8K"], "ylabel": "accuracy on held-out items"},
          compare=(("S²FT · trained on commonsense", "LoRA r8 · trained on commonsense", "on commonsense"),
                   ("S²FT · trained on arithmetic", "LoRA r8 · trained on arithmetic", "on GSM8K"),
                   ("S²FT · trained on commonsense", "full FT · trained on commonsense", "on commonsense"),
                   ("S²FT · trained on arithmetic", "full FT · trained on arithmetic", "on GSM8K"),
                   ("S²FT · trained on arithmetic", "base model (untuned)", "on commonsense"),
                   ("full FT · trained on arithmetic", "base model (untuned)", "on commonsense"),
                   ("S²FT · trained on commonsense", "base model (untuned)", "on GSM8K"),
                   ("full FT · trained on commonsense", "base model (untuned)", "on GSM8K"))),
    Table("s2ft_bench", "S²FT memory and step time (one process per variant)",
          paper="S²FT paper: training memory up to 3× lower and latency 1.5–2.7× lower than full FT "
                "(LLaMA2-7B/13B, seq 512/1024), about 10% better than LoRA."),
    Table("pat", "PAT vs unpruned LoRA vs prune-then-LoRA (SmolLM2-135M, PAT's seven commonsense tasks)",
          paper="PAT paper, 14-task average, Llama2-7B: LoRA-64 unpruned 58.76, PAT 20% 61.04, PAT 25% 60.02, "
                "25% LLM-Pruner prune→FT 52.50, SliceGPT 52.98; ablation at 25%: frozen mask + identity loss "
                "54.97, trainable mask without identity loss 58.62, trainable + identity 60.02. Prefill speed-up "
                "1.33× at 25–30% (A100, context 128).",
          reading="Every row: 32 steps at batch 4 (PAT's soft-mask phase is the first third) on PAT's seven "
                  "commonsense tasks (data=pat_commonsense: BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, "
                  "OpenBookQA, the tasks of PAT's and LLM-Pruner's zero-shot tables), trained on lm-eval's context + "
                  "gold answer. Accuracy is the mean over the seven of lm-eval's zero-shot acc on 50 held-out items "
                  "per task; chance is ≈0.357 (the mean of 1/2, 1/2, 1/4, 1/2, 1/4, 1/4, 1/4) and at 135M parameters "
                  "every row sits near it, so differences within a few points are noise (the ± column says how much). "
                  "Train loss is the task loss over the last 10 steps: PAT's loss jumps at the soft-to-hard mask "
                  "switch, and 32 steps leave too little time to recover from it (docs/methods/pat.md); the parameter "
                  "columns and the bench table are exact at any budget.",
          plot={"bars": ["accuracy"], "ylabel": "7-task average accuracy (chance ≈0.357)"},
          compare=(("PAT 25%", "prune→LoRA 25%", "accuracy"), ("PAT 25%", "LoRA (unpruned)", "accuracy"),
                   ("PAT 25%", "PAT 25% · frozen mask", "accuracy"), ("PAT 25%", "PAT 25% · no identity loss", "accuracy"))),
    Table("pat_bench", "PAT prefill/decode speed-up of the physically pruned model",
          paper="PAT paper: 1.33× time to first token at 25–30% pruning (A100, context 128)."),
    Table("gslora", "GS-LoRA continual forgetting: 4 tasks × 2 classes on the Fashion-MNIST ViT",
          paper="GS-LoRA++ paper: face recognition (CASIA-100, ViT 6 layers) final task GS-LoRA++ H 75.23, "
                "Acc_r 75.36, Acc_f 0; ImageNet100 final GS-LoRA H 86.30 (Acc_f 0.20), GS-LoRA++ 87.00; "
                "1.28% trainable parameters.",
          reading="Acc_o is accuracy on classes forgotten in earlier tasks (must stay near 0); H is the harmonic "
                  "mean of the forgetting drop and Acc_r; surviving groups counts LoRA groups (one per block) left "
                  "non-zero by group sparsity. `random:4x2` draws the class sequence from the seed, so each cell "
                  "averages two different sequences (classes column: seed 0 / seed 1); a large ± on Acc_f is one "
                  "sequence whose class was not forgotten.",
          plot={"x": "task", "y": "H"},
          compare=(("gslora · task 4", "gslora_nogs · task 4", "H"), ("gslora_pp · task 4", "gslora · task 4", "H"),
                   ("gslora · task 4", "gslora_full · task 4", "H"),
                   ("gslora · task 4", "gslora_retrain · task 4", "Acc_r"))),
    Table("evit", "EViT keep rate vs top-1 vs images/s (Fashion-MNIST ViT)",
          paper="EViT paper, DeiT-S (79.8% top-1, 4.6 GMACs): keep 0.9 79.8 / 4.0 GMACs / 3197 img/s; 0.8 79.8 / "
                "3.5 / 3619; 0.7 79.5 / 3.0 / 4385; 0.6 78.9 / 2.6 / 4722; 0.5 78.5 / 2.3 / 5408.",
          reading="The Fashion-MNIST ViT sees 16 tokens (class + 15 patches): keep 0.9 keeps 14 patches and fuses "
                  "1, i.e. 16 tokens again plus the selection work, so it is slower than stock; real savings start "
                  "at 0.7. Its images/s are from the eval pass on this CPU; the DeiT-S-shape bench below (197 "
                  "tokens) is the speed figure to read against the paper's.",
          plot={"x": "keep rate", "y": "top-1", "y2": "images/s"},
          compare=(("off the shelf (no fine-tuning) · keep 0.7", "off the shelf (no fine-tuning) · keep 1", "top-1"),
                   ("fine-tuned at keep 0.7 · keep 0.7", "off the shelf (no fine-tuning) · keep 0.7", "top-1"),
                   ("fine-tuned at keep 0.7 · keep 0.5", "off the shelf (no fine-tuning) · keep 0.5", "top-1"))),
    Table("evit_bench", "EViT throughput (one process per variant)",
          paper="EViT paper: DeiT-S ≈2980 img/s vs EViT-0.7 ≈4790 (batch 64, A100)."),
    Table("spt", "SPT quality vs LoRA on SmolLM2-135M (commonsense mix)",
          paper="SPT paper: quality impact never published (its tables report time and memory only).",
          reading="Same data (the commonsense mix: the S²FT paper's eight tasks, data=commonsense_mix), steps, "
                  "learning rate and seed for each row; short CPU runs. Accuracy is the mean over the eight tasks "
                  "of lm-eval's zero-shot acc on 50 held-out items each (chance ≈0.354); at 135M parameters expect "
                  "every row near chance, so differences of a few points are noise and the losses separate the "
                  "methods.",
          plot={"bars": ["train loss", "final loss"], "ylabel": "loss"},
          compare=(("SPT (recipe)", "LoRA r16, all linears", "train loss"),
                   ("SPT with the routed FFN (top-3 of 4, ste)", "LoRA r16, all linears", "train loss"))),
    Table("spt_bench", "SPT time/memory split vs LoRA (eager and SDPA attention)",
          paper="SPT paper Table 1 (one block, S 512, batch 16, fp32): full FT 188.4 ms / 3.2 GB, LoRA 161.0 ms / "
                "2.7 GB, SPT 106.0 ms / 1.6 GB (MHA 54.1 ms, FFN 54.9 ms)."),
]
