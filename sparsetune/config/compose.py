"""Compose a recipe with Hydra, then validate every group against its schema.

Hydra reports problems as nested exceptions; we turn them into one ConfigError line that names the
key and, for unknown group options, lists the valid ones.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from sparsetune.config.overrides import grammar_hint, quote_path, unquote
from sparsetune.config.schema import EARLIER_DEFAULTS, MethodConfig, renamed_keys
from sparsetune.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
GROUPS = ("model", "data", "method", "trainer", "eval", "logger", "recipe")


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    # OmegaConf appends a "full_key / object_type" trailer that repeats what we already say
    return text.split(" full_key:")[0].strip()


SEARCHPATH_KEY = "hydra.searchpath"
RECIPE_SUFFIXES = (".yaml", ".yml")


def _has_path_parts(value: str) -> bool:
    return "/" in value or "\\" in value or ".." in value


def searchpath_override(dirs) -> str:
    """`hydra.searchpath=['file:///abs/dir', …]`: the user's own option files (DIR/model/mine.yaml, …)."""
    def quote(entry: str) -> str:
        return "'" + entry.replace("\\", "\\\\").replace("'", "\\'") + "'"

    entries = [d if "://" in str(d) else f"file://{Path(d).expanduser().resolve()}" for d in dirs]
    return f"{SEARCHPATH_KEY}=[{','.join(quote(str(e)) for e in entries)}]"


def _searchpath_entries(overrides: list[str]) -> list[str]:
    """Entries of every `hydra.searchpath=[…]` override, in order (quotes stripped)."""
    entries: list[str] = []
    for ov in overrides:
        if ov.lstrip("+").split("=", 1)[0] != SEARCHPATH_KEY or "=" not in ov:
            continue
        body = ov.split("=", 1)[1].strip()
        body = body[1:-1] if body.startswith("[") and body.endswith("]") else body
        for m in re.finditer(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|([^,\s][^,]*)", body):
            raw = next(g for g in m.groups() if g is not None)
            entries.append(re.sub(r"\\(.)", r"\1", raw).strip())
    return [e for e in entries if e]


def user_dirs(overrides: list[str]) -> list[Path]:
    """The user's config dirs (file:// entries of `hydra.searchpath`), searched after the built-in recipes."""
    out = []
    for entry in _searchpath_entries(overrides):
        if entry.startswith("file://"):
            out.append(Path(entry[len("file://"):]))
        elif "://" not in entry:
            out.append(Path(entry))
    return out


def _exists(group: str, value: str, extra_dirs) -> bool:
    return any((Path(d) / group / f"{value}.yaml").is_file() for d in (RECIPES_DIR, *extra_dirs))


def _check_overrides(overrides: list[str]) -> None:
    extra = user_dirs(overrides)
    for ov in overrides:
        key = ov.lstrip("+~").split("=", 1)[0]
        group = key.split("/")[0]
        if "=" not in ov or "." in key or group not in GROUPS:
            continue
        value = ov.split("=", 1)[1]
        if group == "recipe" and value == "null":
            continue
        if value == "":
            raise ConfigError(f"{key}= needs a {group} name; available: {', '.join(options(group, extra))}")
        if _has_path_parts(value):
            hint = ("give a recipe file path ending in .yaml, or a name" if group == "recipe"
                    else f"put your own files in DIR/{group}/NAME.yaml and pass --config-dir DIR")
            raise ConfigError(f"{group} names may not contain path parts ('{value}'); {hint}")
        if not _exists(group, value, extra):
            raise ConfigError(f"unknown {group} '{value}'; available: {', '.join(options(group, extra))}")


def _sanitise(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "recipe"


def yaml_error(path, exc: yaml.YAMLError) -> str:
    """'FILE: line L, column C: not valid YAML (problem)', the line and column as an editor counts them."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    hint = "; indent with spaces, YAML allows no tabs" if "'\\t'" in problem else ""
    return f"{path}: {where}not valid YAML ({problem}){hint}"


def read_recipe_file(path: Path) -> str:
    """A user's recipe file's text, or one ConfigError line naming the file: not there, a directory,
    unreadable, not YAML (with the line and column), empty, or not a mapping of config keys. Hydra
    would read a copy of it and report a traceback naming that copy, or run an empty file as a recipe."""
    if path.is_dir():
        raise ConfigError(f"recipe file {path} is a directory; give a .yaml file")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read recipe file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error(path, exc)) from None
    if data is None:
        raise ConfigError(f"recipe file {path} is empty; a recipe sets config keys (see recipes/recipe/*.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {path} holds a {type(data).__name__}, not a mapping of config keys")
    return text


def _user_recipe(overrides: list[str], tmp: Path) -> tuple[list[str], str | None]:
    """`recipe=path/to/mine.yaml` → a copy as `recipe/user__mine.yaml` in `tmp`, added to the search
    path; returns the new overrides and the recipe's run name (the file's stem, sanitised)."""
    index = next((i for i, o in enumerate(overrides) if o.startswith("recipe=")
                  and unquote(o.split("=", 1)[1]).lower().endswith(RECIPE_SUFFIXES)), None)
    if index is None:
        return overrides, None
    path = Path(unquote(overrides[index].split("=", 1)[1])).expanduser()
    text = read_recipe_file(path)
    if "@package" not in "".join(text.lstrip().splitlines(keepends=True)[:3]):
        text = "# @package _global_\n" + text  # recipes set top-level keys (model:, trainer:, …)
    name = _sanitise(path.stem)
    (tmp / "recipe").mkdir(parents=True, exist_ok=True)
    (tmp / "recipe" / f"user__{name}.yaml").write_text(text)
    out = list(overrides)
    out[index] = f"recipe=user__{name}"
    dirs = [str(d) for d in user_dirs(out)] + [str(tmp)]
    out = [o for o in out if o.lstrip("+").split("=", 1)[0] != SEARCHPATH_KEY] + [searchpath_override(dirs)]
    return out, name


def _force(override: str) -> str:
    """`trainer.epochs=1` → `++trainer.epochs=1`: recipes need not spell out every schema field, and
    keys outside the schema are rejected by `validate` with a list of the valid ones."""
    key = override.split("=", 1)[0]
    if "=" not in override or override.startswith(("+", "~")) or key in GROUPS or key.startswith("hydra."):
        return override
    return "++" + override


def options(group: str, extra_dirs=()) -> list[str]:
    """Option names of a config group: the built-in recipes' and those in the user's config dirs."""
    names = {p.stem for d in (RECIPES_DIR, *extra_dirs) for p in (Path(d) / group).glob("*.yaml")}
    return sorted(n for n in names if not n.startswith("user__"))


# name -> the method's config dataclass; the jobs layer passes the registry's lookup (config sits
# below methods and never imports them)
MethodSchemas = Callable[[str], type]


def compose(overrides: list[str] | None = None, method_schema: MethodSchemas | None = None):
    """Compose `config.yaml` with the given Hydra overrides; returns a validated, typed DictConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    with tempfile.TemporaryDirectory(prefix="sparsetune-recipe-") as tmp:
        overrides, user_recipe = _user_recipe(overrides, Path(tmp))
        _check_overrides(overrides)
        forced = [_force(quote_path(o)) for o in overrides]  # paths work with or without quotes
        try:
            with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
                cfg = hydra_compose("config", overrides=forced)
        except (HydraException, OmegaConfBaseException) as exc:
            root = _root_cause(exc)
            if isinstance(root, OverrideParseException) or isinstance(exc, OverrideParseException):
                hint = grammar_hint(forced)
                if hint:
                    raise ConfigError(hint) from None
            key = getattr(root, "full_key", None)
            if key and "not in struct" in str(root):
                raise ConfigError(_unknown_key(key, _method_name(overrides), method_schema=method_schema)) from None
            raise ConfigError(_one_line(root) or _one_line(exc)) from None
        except yaml.YAMLError as exc:  # an option file in the user's --config-dir that is not YAML
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(yaml_error(getattr(mark, "name", "a config file"), exc)) from None
        except (ValueError, TypeError) as exc:  # e.g. `data.tasks.x=1`: a key into a list
            from sparsetune.config.checks import override_error
            from sparsetune.config.store import registered_method_schema

            name = _method_name(overrides)
            schema = (method_schema or registered_method_schema)(name) if name else None
            raise ConfigError(override_error(overrides, exc, schema)) from None
    recipe = user_recipe or next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), None)
    return validate(cfg, recipe=recipe, method_schema=method_schema)


def _method_name(overrides: list[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), None)


def _schema_of(method: str | None, method_schema: MethodSchemas | None):
    if method_schema is None or method is None:
        return MethodConfig
    return method_schema(method)


def _unknown_key(full_key: str, method: str | None = None, schema=None, parent: str | None = None,
                 method_schema: MethodSchemas | None = None) -> str:
    """'unknown key model.hidden_sise; valid keys in model: …' from the dataclass schemas."""
    import dataclasses

    from sparsetune.config.schema import Config

    if parent:
        full_key = f"{parent}.{full_key}"
    parts = full_key.split(".")
    node = schema or Config
    if schema is not None:
        parts_walk = parts[1:-1]
    else:
        parts_walk = parts[:-1]
    for part in parts_walk:
        if part == "method" and node is Config:
            try:
                node = _schema_of(method, method_schema)
            except ConfigError:
                node = None
        else:
            fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
            default = fields[part].default_factory() if part in fields and callable(fields[part].default_factory) else None
            node = type(default) if dataclasses.is_dataclass(default) else None
        if node is None:
            break
    msg = f"unknown config key '{full_key}'"
    if node is not None and dataclasses.is_dataclass(node):
        parent = ".".join(parts[:-1]) or "the top level"
        msg += f"; valid keys in {parent}: {', '.join(f.name for f in dataclasses.fields(node))}"
    return msg


def validate(cfg, recipe: str | None = None, method_schema: MethodSchemas | None = None):
    """Merge the composed tree onto the schemas; reject unknown keys and wrong types."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from sparsetune.config.schema import Config

    raw = OmegaConf.to_container(cfg, resolve=False)
    method_raw = raw.pop("method", None) or {"name": "full"}
    if recipe is not None:
        raw["recipe"] = recipe
    section = ""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), raw)
        section = "method."
        if method_schema is None:  # no registry at hand (config-only callers): the registered schema, if any
            from sparsetune.config.store import registered_method_schema

            method_schema = registered_method_schema if registered_method_schema(method_raw.get("name", "full")) else None
        if method_schema is None:  # nothing registered for it: method keys kept as given
            typed.method = OmegaConf.create(method_raw)
        else:
            schema = method_schema(method_raw.get("name", "full"))
            renamed = renamed_keys(method_raw, schema)  # a stored config's were carried over already
            if renamed:
                old, new = renamed[0]
                raise ConfigError(f"method.{old} was renamed to method.{new}; give method.{new} instead")
            typed.method = OmegaConf.merge(OmegaConf.structured(schema), method_raw)
    except (ConfigAttributeError, ConfigKeyError) as exc:
        key = getattr(exc, "full_key", "") or ""
        if section:
            raise ConfigError(_unknown_key(key, schema=schema, parent="method")) from None
        raise ConfigError(_unknown_key(key)) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        if not key and "Cannot merge DictConfig with ListConfig" in str(exc):  # `data.tasks.x=1`
            from sparsetune.config.checks import dict_for_list, list_error

            where = (dict_for_list(method_raw, schema, "method.") if section else dict_for_list(raw, Config))
            if where:
                raise ConfigError(list_error(where)) from None
        full = f"{section}{key}" if key else section.rstrip(".")
        raise ConfigError((f"{full}: " if full else "") + _one_line(exc)) from None
    OmegaConf.set_readonly(typed, False)
    OmegaConf.set_struct(typed, True)
    from sparsetune.config.checks import check_config

    check_config(typed)  # resolve every interpolation, then ranges/enums: one line per problem
    if method_schema is not None:
        schema.check(typed.method)  # the method's own rules, before anything loads
    return typed


def carry_renamed_keys(cfg, method_schema: MethodSchemas | None = None):
    """A stored config (a run folder's config.yaml) written before a method key was renamed
    (schema.RENAMED_METHOD_KEYS: `lora_r` -> `r`, ...): each old key takes its new name, value kept,
    in place (a plain dict or a DictConfig); returns `cfg`. A key whose default changed since and that
    the config lacks takes the value it had then (schema.EARLIER_DEFAULTS). Only stored configs are
    carried over (`eval run=`, `export run=`, `resume=`): an old key the user types fails in `validate`."""
    method = cfg.get("method") if hasattr(cfg, "get") else None
    if not hasattr(method, "get"):
        return cfg
    try:
        schema = _schema_of(method.get("name", "full"), method_schema)
    except ConfigError:  # an unknown method name: validate says so
        return cfg
    for old, new in renamed_keys(method, schema):
        value = method.pop(old)
        if new not in method:
            method[new] = value
    for (name, key), value in EARLIER_DEFAULTS.items():
        if method.get("name") == name and key not in method:
            method[key] = value
    return cfg


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) for every recipe file."""
    out = []
    for name in options("recipe"):
        data = yaml.safe_load((RECIPES_DIR / "recipe" / f"{name}.yaml").read_text()) or {}
        out.append((name, str(data.get("description", "")).strip()))
    return out
