"""Training data built from the papers' own benchmarks, formatted exactly as lm-eval scores them.

`source: benchmarks`, `tasks: [boolq, piqa, ...]` (lm-eval task names with an offline copy, see
data/benchmarks.py). Per task, the shipped items are deduplicated on their normalised question text,
shuffled with `split_seed`, and `test_size` of them are held out; the rest of every task is pooled
into training and validation, minus any item whose normalised text is held out in *any* task. The
held-out items keep their row index, so evaluation scores them with lm-eval's own task on exactly
those rows (eval/suite.py).

A training example is what lm-eval scores for the gold answer: the context lm-eval builds for the
item (zero-shot) as the prompt and the gold continuation (target delimiter included) as the answer,
taken from lm-eval's task object — no prompt text is written here. Train with
`prompt_template: none`, so the prompt reaches the model unchanged.

`generator: gsm_symbolic` (or another reasoning-gym data set) draws the training items from
reasoning-gym instead, in the task's columns (GSM8K: question + worked answer ending "#### N"), and
holds out the real shipped items: the S²FT paper's Math10K → GSM8K protocol at CPU scale.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import yaml

from sparsetune.data.benchmarks import (
    SUITES,
    expand,
    full_split_folder,
    has_local_copy,
    local_task_names,
    quiet_lm_eval,
    task_manager,
    write_atomic,
)
from sparsetune.data.sources.split import hold_out, make_splits
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError, DataError
from sparsetune.paths import cache_dir

TEMPLATE = "none"
FORMAT_VERSION = "1"  # bump when example_from_doc changes what it writes
# reasoning-gym appends this to every GSM-Symbolic question; GSM8K's questions do not have it
_RG_SUFFIX = re.compile(r"\s*Give the result as your final answer\.(?:\s*Do not include units\.)?\s*$")


def normalise(text: str) -> str:
    """Case, punctuation and spacing removed: the key that decides "the same item"."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _gold_index(task: Any, doc: dict, choices: list[str]) -> int:
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else int(gold)
    if isinstance(gold, list):
        gold = gold[0]
    return int(gold)


def example_from_doc(task: Any, doc: dict, row: Optional[int]) -> Example:
    """The (context, gold continuation) pair lm-eval scores for `doc`, as a training Example."""
    name = task.config.task
    ctx = task.fewshot_context(doc, 0)
    if task.OUTPUT_TYPE == "multiple_choice":
        requests = task.construct_requests(doc, ctx, metadata=(name, row or 0, 1))
        pairs = [r.arguments for r in requests]
        choices = [str(c) for c in task.doc_to_choice(doc)]
        label = _gold_index(task, doc, choices)
        prompt, answer = pairs[label][0], pairs[label][1]
        same_context = len({p[0] for p in pairs}) == 1
        return Example(prompt=prompt, answer=answer, task=name, row=row,
                       choices=[p[1] for p in pairs] if same_context else None,
                       label=label if same_context else None)
    if task.OUTPUT_TYPE == "generate_until":
        target = task.doc_to_target(doc)
        target = target[0] if isinstance(target, list) else target
        return Example(prompt=str(ctx), answer=f"{task.config.target_delimiter}{target}", task=name, row=row)
    raise DataError(f"task '{name}': output type {task.OUTPUT_TYPE} cannot be turned into training items")


def _generated_docs(generator: str, count: int, seed: int) -> list[dict]:
    """`count` distinct reasoning-gym items as GSM8K-style docs {question, answer: worked answer + #### N}."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("data.generator needs reasoning-gym: pip install -c constraints.txt reasoning-gym") from None
    size = count + count // 10 + 20
    items = reasoning_gym.create_dataset(generator, size=size, seed=seed)
    docs, seen = [], set()
    for i in range(size):
        item = items[i]
        question = _RG_SUFFIX.sub("", item["question"].strip())
        if question in seen:
            continue
        seen.add(question)
        worked = (item.get("metadata") or {}).get("answer_cot")
        answer = worked if worked and "####" in worked else f"#### {item['answer']}"
        docs.append({"question": question, "answer": answer})
        if len(docs) == count:
            return docs
    raise DataError(f"{generator}: could only generate {len(docs)} distinct items of {count}")


def _items_cache(folder: Path, name: str) -> Path:
    """Where task `name`'s formatted items are kept: named by lm-eval's version, the redirect YAML
    (whose data file is named by the rows' content) and every file of lm-eval's stock task folder,
    so a change to any of them formats afresh. Formatting renders ~3 Jinja templates per item
    (lm-eval compiles each anew): ~40 s for the eight commonsense tasks, once."""
    import lm_eval

    spec = (folder / f"{name}.yaml").read_text(encoding="utf-8")
    stock = Path(yaml.safe_load(spec)["include"]).parent
    parts = [getattr(lm_eval, "__version__", "?"), FORMAT_VERSION, spec]
    parts += [p.read_text(encoding="utf-8") for p in sorted(stock.glob("*")) if p.suffix in (".yaml", ".py", "")
              and p.is_file()]
    digest = hashlib.sha1("\0".join(parts).encode("utf-8")).hexdigest()[:16]
    return cache_dir("data", "benchmark_items") / f"{name}-{digest}.jsonl"


def _task_examples(names: list[str]) -> dict[str, list[Example]]:
    """Every shipped item of each task as a training Example (row = its index), from the cache when
    it holds them."""
    folder = full_split_folder(names)
    out: dict[str, list[Example]] = {}
    todo = []
    for name in names:
        path = _items_cache(folder, name)
        if path.is_file():
            out[name] = [Example(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
        else:
            todo.append((name, path))
    if todo:
        tasks = _load_tasks([n for n, _ in todo], folder)
        with quiet_lm_eval():
            for name, path in todo:
                out[name] = [example_from_doc(tasks[name], doc, i) for i, doc in enumerate(tasks[name].eval_docs)]
                write_atomic(path, "".join(json.dumps(asdict(ex), ensure_ascii=False) + "\n" for ex in out[name]))
    return {name: out[name] for name in names}


def _load_tasks(names: list[str], folder: Optional[Path] = None) -> dict[str, Any]:
    """lm-eval's task objects for `names`, on their whole shipped split."""
    with quiet_lm_eval():
        return task_manager(str(folder or full_split_folder(names))).load(list(names))["tasks"]


def load_benchmarks(data_cfg: Any) -> Splits:
    names = expand(list(data_cfg.tasks or []))
    if not names:
        raise ConfigError(f"data.tasks must name lm-eval tasks for source=benchmarks, e.g. {list(SUITES)[0]}")
    missing = [n for n in names if not has_local_copy(n)]
    if missing:
        raise ConfigError(f"data.tasks: no offline copy of {missing}; available: {', '.join(local_task_names())}")
    if data_cfg.prompt_template != TEMPLATE:
        raise ConfigError(f"source=benchmarks formats items as lm-eval scores them: set "
                          f"data.prompt_template={TEMPLATE} (got {data_cfg.prompt_template})")
    by_task = _task_examples(names)
    if not data_cfg.generator:
        return make_splits(by_task, data_cfg, key=lambda ex: normalise(ex.prompt))
    # training items from the generator, held-out items from the shipped benchmark
    test, kept = _generated_parts(data_cfg, names, by_task)
    generated = [ex for _, ex in kept]
    n_val = int(data_cfg.val_size or 0)
    train_size = 2000 if data_cfg.train_size is None else int(data_cfg.train_size)
    return Splits(kind="text", train=generated[n_val:][:train_size], val=generated[:n_val], test=test)


def _generated_parts(data_cfg: Any, names: list[str], by_task: dict[str, list[Example]]):
    """(held-out shipped items, [(doc, example)] of the generated items none of which is held out): the
    validation part is the first `val_size` of the generated ones, training the rest."""
    if len(names) != 1:
        raise ConfigError("data.generator fills the training part of one task: give exactly one data.tasks entry")
    name = names[0]
    train_size = 2000 if data_cfg.train_size is None else int(data_cfg.train_size)
    docs = _generated_docs(str(data_cfg.generator), train_size + int(data_cfg.val_size or 0), int(data_cfg.split_seed))
    task = _load_tasks([name])[name]
    with quiet_lm_eval():
        generated = [example_from_doc(task, doc, None) for doc in docs]
    test, _ = hold_out(by_task, data_cfg, key=lambda ex: normalise(ex.prompt))
    held_keys = {normalise(ex.prompt) for ex in test}
    return test, [(doc, ex) for doc, ex in zip(docs, generated) if normalise(ex.prompt) not in held_keys]


def generated_validation_docs(data_cfg: Any) -> list[dict]:
    """The docs (the task's columns) of a generated data set's validation part, never trained on: what a
    caller scores as in-domain held-out items with the task's own lm-eval definition."""
    if not data_cfg.generator:
        raise ConfigError(f"data '{data_cfg.name}' has no data.generator: its held-out items are shipped rows")
    names = expand(list(data_cfg.tasks or []))
    _, kept = _generated_parts(data_cfg, names, _task_examples(names))
    return [doc for doc, _ in kept[: int(data_cfg.val_size or 0)]]
