"""The sweep's grid: Hydra's own `OverridesParser` and sweep types (choices `a,b`, `range()`, `glob()`,
`choice()`, …) expand the overrides into points exactly as its BasicSweeper builds the cartesian
product, and every point is composed (so validated) before anything runs or any folder exists.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from sparsetune.config.compose import RECIPES_DIR, SEARCHPATH_KEY
from sparsetune.config.overrides import quote_path
from sparsetune.engine.run_folder import RunFolder
from sparsetune.errors import ConfigError
from sparsetune.jobs.config import compose_job

LAUNCHER_GROUP = "hydra/launcher"
RAW_KEYS = ("run", "recipe")  # values the command line reads as text, not through Hydra's parser
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:+-]+$")


@dataclass
class Point:
    index: int
    overrides: list[str]  # the point's command line: fixed overrides and its swept values, in the user's order
    params: dict[str, str]  # swept key -> this point's value (Hydra's string form)
    id: str  # folder and log name, from the swept values (Hydra's override_dirname style)
    status: str = "pending"  # pending | done | failed | skipped (finished by an earlier invocation)
    run: str | None = None  # run folder, relative to the sweep folder when inside it
    returncode: int | None = None
    seconds: float | None = None
    error: str | None = None  # last line of the point's output when it failed
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Grid:
    fixed: list[str]  # overrides every point gets
    swept: dict[str, list[str]]  # key -> values, in command-line order
    settings: list[str]  # sweep.* (the sweep's own settings; not passed to points)
    launcher: list[str]  # hydra/launcher=…, hydra.launcher.* (the launcher's; not passed to points)
    points: list[Point]


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def run_of(point) -> str:
    """The run folder an `eval run=…` point evaluates."""
    return _unquote(next(o.split("=", 1)[1] for o in point.overrides if override_key(o) == "run"))


def hydra_value(value: str) -> str:
    """`value` as it may stand after `key=` in a Hydra override: quoted when it holds `,`, `=`, spaces, …"""
    if _SAFE_VALUE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _GroupOptions:
    """Hydra's config loader, asked for a group's options with the user's search path (`--config-dir`),
    so `glob(*)` also sees their option files."""

    def __init__(self, loader, searchpath: list[str]) -> None:
        self._loader = loader
        self._searchpath = searchpath

    def get_group_options(self, group_name, results_filter=None, config_name=None, overrides=None):
        names = self._loader.get_group_options(group_name, results_filter or ObjectType.CONFIG, "config",
                                               self._searchpath)
        return [n for n in names if not n.startswith("user__")]

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


@contextmanager
def hydra_loader() -> Iterator[Any]:
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        yield GlobalHydra.instance().config_loader()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.split(" See https://hydra.cc")[0]


def point_id(params: dict[str, str]) -> str:
    """`method.d_ratio=0.01,seed=0` (Hydra's override_dirname style), made safe for a folder name;
    a hash of the exact values is added when that changed anything or the name is long."""
    if not params:
        return "point"
    exact = ",".join(f"{k}={v}" for k, v in params.items())
    shown = ",".join(f"{k.lstrip('+~')}={Path(_unquote(v)).name if '/' in v else v}" for k, v in params.items())
    safe = re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", shown).strip("._-") or "point"
    if safe != exact or len(safe) > 80:
        safe = f"{safe[:80]}-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"
    return safe


def _parse(parser, raw: str) -> list:
    """Hydra's parse of one override; a path value Hydra's grammar cannot read bare (`data.path=/d/é.jsonl`)
    is read quoted, as a single run reads it (config/overrides.quote_path). A sweep of paths
    (`data.path=a.jsonl,b.jsonl`) parses bare, so it stays a sweep."""
    try:
        return parser.parse_overrides([raw])
    except HydraException:
        quoted = quote_path(raw)
        if quoted == raw:
            raise
        return parser.parse_overrides([quoted])


def expand(overrides: Sequence[str]) -> Grid:
    """The cartesian product of every sweep override, as Hydra's BasicSweeper builds it (a later
    override of the same key replaces an earlier one in its place); fixed overrides keep their
    original text."""
    searchpath = [o for o in overrides if override_key(o) == SEARCHPATH_KEY]
    entries: dict[str, tuple[str, Any]] = {}
    settings, launcher = [], []
    with hydra_loader() as loader:
        parser = OverridesParser.create(config_loader=_GroupOptions(loader, searchpath))
        for raw in overrides:
            try:
                (ov,) = _parse(parser, raw)
                sweep = ov.is_sweep_override()
                key, bare = ov.get_key_element(), override_key(raw)
                if bare.startswith("sweep.") or bare == LAUNCHER_GROUP or bare.startswith("hydra.launcher."):
                    if sweep:
                        raise ConfigError(f"{bare} cannot be swept (it sets up the sweep itself)")
                    (settings if bare.startswith("sweep.") else launcher).append(raw)
                    continue
                if bare in ("resume", "run_dir", SEARCHPATH_KEY) and sweep:
                    raise ConfigError(f"{bare} cannot be swept")
                if bare == "resume":
                    raise ConfigError("resume= does not go with -m: rerun the sweep command (same sweep.dir) "
                                      "to run its unfinished points again")
                if not sweep:
                    entries[key] = ("fixed", raw)
                    continue
                if not ov.is_discrete_sweep():
                    raise ConfigError(f"{raw}: {ov.value_type.name.lower()} sweeps need an optimising sweeper; "
                                      "give values: a,b · range(0,3) · choice(a,b) · glob(*)")
                # run= and recipe= are read as plain text by the command line (a run folder, a recipe
                # file): their values go as they are; every other value keeps Hydra's quoted form
                values = ([getattr(v, "text", str(v)) for v in ov.sweep_iterator()] if bare in RAW_KEYS
                          else list(ov.sweep_string_iterator()))  # QuotedString.text: the unquoted value
            except ConfigError:
                raise
            except (HydraException, ValueError, TypeError) as exc:
                raise ConfigError(f"{raw}: {one_line(exc)}") from None
            if not values:
                raise ConfigError(f"{raw}: the sweep gives no values"
                                  + (" (glob() matches option names of a config group: model, data, method, recipe, …)"
                                     if "glob(" in raw else ""))
            entries[key] = ("sweep", values)
    swept = {k: v for k, (kind, v) in entries.items() if kind == "sweep"}
    points = []
    for index, combo in enumerate(itertools.product(*swept.values())):
        params = dict(zip(swept, combo))
        ovs = [v if kind == "fixed" else f"{k}={params[k]}" for k, (kind, v) in entries.items()]
        points.append(Point(index, ovs, params, point_id(params)))
    fixed = [v for kind, v in entries.values() if kind == "fixed"]
    return Grid(fixed, swept, settings, launcher, points)


def compose_points(job: str, grid: Grid, in_place: bool):
    """Compose (and so validate) every point before anything runs, as Hydra's sweeper does; returns the
    first point's config (the sweep's own settings are the same for all)."""
    first = None
    for point in grid.points:
        if in_place:
            RunFolder.open(run_of(point))
            if first is None:  # the sweep's own settings; each point's eval.* are checked by its run's config
                first = compose_job([o for o in point.overrides if override_key(o) != "run"] + grid.settings)
            continue
        try:
            cfg = compose_job([*point.overrides, *grid.settings])
        except ConfigError as exc:
            if len(grid.points) == 1 or not point.params:
                raise
            raise ConfigError(f"sweep point {point.id}: {exc}") from None
        first = first if first is not None else cfg
    return first
