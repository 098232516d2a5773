"""One validation pass over the whole resolved config, before anything is loaded or created.

`check_config` runs at the end of `validate()`: it resolves every interpolation (in place, so the
stored config.yaml holds plain values), then checks every `one_of` field against the choices its
schema lists (schema.py), then ranges, patterns and finite numbers. Every problem is one
`ConfigError` line: "<key>: <what is wrong>; <what is valid>".

`check_environment` checks the runs root (exists or can be created, is a directory, is writable,
has some free space); the jobs layer calls it before any run folder is created.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsetune.config.schema import check_choices
from sparsetune.errors import ConfigError

# trainer.device is a pattern (cuda:N), not a plain enum: checked here, not by check_choices
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N", "mps")
SEED_MAX = 2**32 - 1
# free space the runs root must have before a run starts (config, checkpoints, metrics)
MIN_FREE_BYTES = 200 * 1024 * 1024

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _one_line(text: Any) -> str:
    text = " ".join(str(text).split())
    return text.split(" full_key:")[0].strip()


# ------------------------------------------------------------------------------------ resolution
def resolve_all(cfg) -> None:
    """Resolve every interpolation in place; the first that fails is one line naming its key."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    def walk(node, prefix: str) -> None:
        keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        for key in keys:
            path = f"{prefix}[{key}]" if isinstance(node, ListConfig) else (f"{prefix}.{key}" if prefix else str(key))
            child = node._get_node(key)
            raw = child._value() if child is not None else None
            try:
                value = node[key]
            except OmegaConfBaseException as exc:
                raise ConfigError(f"{path}: cannot resolve {raw!r} ({_one_line(exc)}); "
                                  "give a plain value or an interpolation that resolves") from None
            if isinstance(value, (DictConfig, ListConfig)):
                walk(value, path)

    walk(cfg, "")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:  # pragma: no cover - every leaf resolved above
        raise ConfigError(_one_line(exc)) from None


# ------------------------------------------------------------------------------------ value checks
def _get(cfg, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=default)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: _is_number(v) and float(v).is_integer() and v >= lo


def _need(key: str, value: Any, ok: bool, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not valid; {valid}")


def check_precision(precision: str, device: str) -> None:
    """The one fp16 guard: fp16 autocast with a GradScaler exists only on CUDA. The config check
    calls it for an explicit device, the job once `auto` is resolved, the loop for direct users."""
    if precision == "fp16" and not str(device).startswith("cuda"):
        raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (this run is on {device}); "
                          "use trainer.precision=bf16 on the CPU")


def check_group_choices(cfg) -> None:
    """Every shared group's `one_of` fields (schema.py) against their choices; methods check their own."""
    import dataclasses

    from sparsetune.config.schema import Config

    for f in dataclasses.fields(Config):
        group = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        node = _get(cfg, f.name)
        if dataclasses.is_dataclass(group) and node is not None:
            check_choices(type(group), node, f.name)


def check_values(cfg) -> None:
    """Ranges and finite numbers of the shared groups (their enums: check_group_choices)."""
    t = "trainer."
    g = lambda key, default=None: _get(cfg, key, default)  # noqa: E731

    for key in ("batch_size", "grad_accum"):
        v = g(t + key)
        _need(t + key, v, _int_at_least(1)(v), "must be an integer >= 1")
    lr = g(t + "lr")
    _need(t + "lr", lr, _finite(lr) and lr > 0, "must be a finite number > 0")
    wd = g(t + "weight_decay")
    _need(t + "weight_decay", wd, _finite(wd) and wd >= 0, "must be a finite number >= 0")
    epochs = g(t + "epochs")
    if epochs is None:
        v = g(t + "max_steps")
        _need(t + "max_steps", v, _int_at_least(1)(v), "must be an integer >= 1 (or set trainer.epochs)")
    else:
        _need(t + "epochs", epochs, _finite(epochs) and epochs > 0, "must be a finite number > 0, or null")
    v = g(t + "warmup_steps")
    _need(t + "warmup_steps", v, _int_at_least(0)(v), "must be an integer >= 0")
    betas = g(t + "betas")
    if betas is not None:
        ok = len(betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in betas)
        _need(t + "betas", list(betas), ok, "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    v = g(t + "max_grad_norm")
    _need(t + "max_grad_norm", v, v is None or (_finite(v) and v > 0), "must be a finite number > 0, or null")
    v = g(t + "device")
    _need(t + "device", v, isinstance(v, str) and bool(_DEVICE_RE.match(v)), f"valid: {', '.join(DEVICES)}")
    v = g(t + "threads")
    _need(t + "threads", v, v is None or _int_at_least(1)(v), "must be an integer >= 1, or null")
    for key in ("eval_every", "save_every", "log_every"):
        v = g(t + key)
        _need(t + key, v, _int_at_least(0)(v), "must be an integer >= 0 (0: only at the end)")
    v = g(t + "num_workers")
    if v is not None:
        _need(t + "num_workers", v, _int_at_least(0)(v), "must be an integer >= 0")
    v = g(t + "nproc")
    if v is not None:
        _need(t + "nproc", v, _int_at_least(1)(v), "must be an integer >= 1 (processes to train with)")
    if str(g(t + "device")) in ("cpu", "mps"):
        check_precision(g(t + "precision"), str(g(t + "device")))

    for key in ("seed", "data.split_seed"):
        v = g(key)
        if v is not None:
            _need(key, v, _int_at_least(0)(v) and v <= SEED_MAX, f"must be an integer in [0, {SEED_MAX}]")

    d = "data."
    v = g(d + "max_length")
    _need(d + "max_length", v, _int_at_least(1)(v), "must be an integer >= 1")
    for key in ("test_size", "val_size"):
        v = g(d + key)
        _need(d + key, v, _int_at_least(0)(v), "must be an integer >= 0")
    v = g(d + "train_size")
    _need(d + "train_size", v, v is None or _int_at_least(1)(v), "must be an integer >= 1, or null (all)")
    v = g(d + "image_size")
    if v is not None:
        _need(d + "image_size", v, _int_at_least(1)(v), "must be an integer >= 1")
    v = g(d + "num_classes")
    _need(d + "num_classes", v, v is None or _int_at_least(1)(v), "must be an integer >= 1, or null")

    e = "eval."
    v = g(e + "limit")
    _need(e + "limit", v, v is None or _int_at_least(1)(v), "must be an integer >= 1, or null (all)")
    v = g(e + "batch_size")
    _need(e + "batch_size", v, _int_at_least(1)(v), "must be an integer >= 1")


def check_config(cfg) -> None:
    """The whole validation pass: resolve every interpolation, then check every value."""
    resolve_all(cfg)
    check_group_choices(cfg)
    check_values(cfg)
    check_sweep(cfg)


def check_sweep(cfg) -> None:
    """`sweep.*` (sparsetune/jobs/sweep/); the launcher name is checked against Hydra's plugins in
    sweep/hydra_launcher.py."""
    v = _get(cfg, "sweep.jobs", 1)
    _need("sweep.jobs", v, _int_at_least(1)(v), "must be an integer >= 1 (points run at once)")
    for key in ("sweep.name", "sweep.metric", "sweep.x", "sweep.launcher", "sweep.dir"):
        v = _get(cfg, key)
        _need(key, v, v is None or (isinstance(v, str) and v.strip() != ""), "must be a non-empty string, or null")
    for key in ("sweep.name", "sweep.launcher"):
        v = _get(cfg, key)
        _need(key, v, v is None or not re.search(r"[/\\]|\.\.", v), "may not contain path parts "
              "(sweep.dir=PATH picks the folder)")


# ------------------------------------------------------------------------------------ trust
def _asks_for_trust(overrides: list[str] | None) -> bool:
    for ov in overrides or []:
        key, _, value = ov.lstrip("+").partition("=")
        if key == "model.trust_remote_code" and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
    return False


def forbid_stored_trust_remote_code(cfg, overrides: list[str] | None = None):
    """A stored config (a run folder's config.yaml) never switches on `model.trust_remote_code`:
    it loads with the flag off unless this command line passes `model.trust_remote_code=true` again.

    Works on a plain dict or a DictConfig, in place; returns it."""
    allow = _asks_for_trust(overrides)
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is not None and hasattr(model, "get") and "trust_remote_code" in model:
        model["trust_remote_code"] = allow
    return cfg


# ------------------------------------------------------------------------------------ environment
def check_environment(runs_root: str | os.PathLike, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """The runs root exists (or can be created), is a directory, is writable and has some free space.

    Creates nothing; one ConfigError line per problem. Returns the resolved path."""
    root = Path(runs_root).expanduser().resolve()
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == root else f" ({existing} is a file)"
        raise ConfigError(f"run_dir: {root} is not a directory{where}; give a folder for run folders")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == root else f"cannot be created ({existing} is not writable)"
        raise ConfigError(f"run_dir: {root} {what}; give a writable folder (run_dir=... or $SPARSETUNE_RUNS)")
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        raise ConfigError(f"run_dir: {root} has {free // 2**20} MB free; at least {min_free_bytes // 2**20} MB "
                          "are needed for checkpoints and logs")
    return root


# ------------------------------------------------------------------------------------ override keys
def _list_prefix(key: str, method_schema: type | None) -> str | None:
    """The part of a dotted key that names a list, when the key then goes on with a non-index."""
    import dataclasses
    import typing

    from sparsetune.config.schema import Config

    parts = key.split(".")
    node: Any = Config
    for i, part in enumerate(parts[:-1]):
        if node is Config and part == "method":
            node = method_schema
            if node is None:
                return None
            continue
        if not dataclasses.is_dataclass(node):
            return None
        kind = typing.get_type_hints(node).get(part)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is typing.Union and len(args) == 1:
            kind = args[0]
        if typing.get_origin(kind) is list or kind is list:
            return None if parts[i + 1].isdigit() else ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(kind):
            return None
        node = kind
    return None


def override_error(overrides: list[str], exc: BaseException, method_schema: type | None = None) -> str:
    """One line for an override Hydra could not apply to the tree (e.g. `data.tasks.x=1`)."""
    for ov in overrides:
        key = ov.lstrip("+~").split("=", 1)[0]
        prefix = _list_prefix(key, method_schema) if "." in key else None
        if prefix:
            return f"{key}: {prefix} is a list, not a mapping; give the whole list, e.g. {prefix}=[a,b], or an index"
    return f"cannot apply the overrides ({_one_line(exc)}); each key must name a field, e.g. trainer.lr=1e-4"


def dict_for_list(raw: Any, schema: type, prefix: str = "") -> str | None:
    """The dotted path where a plain tree holds a mapping but `schema` wants a list (`data.tasks.x=1`)."""
    import dataclasses
    import typing

    if not (dataclasses.is_dataclass(schema) and isinstance(raw, dict)):
        return None
    hints = typing.get_type_hints(schema)
    for key, value in raw.items():
        kind = hints.get(key)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is typing.Union and len(args) == 1:
            kind = args[0]
        path = f"{prefix}{key}"
        if (typing.get_origin(kind) is list or kind is list) and isinstance(value, dict):
            return path
        found = dict_for_list(value, kind, path + ".") if dataclasses.is_dataclass(kind) else None
        if found:
            return found
    return None


def list_error(path: str) -> str:
    return f"{path}: is a list, not a mapping; give the whole list, e.g. {path}=[a,b]"
