"""Offline means offline: nothing reaches the network unless the config asks for it.

`configure_network(cfg)` runs at the start of every job (`jobs.assemble.setup`), before any model or
data is loaded. The network is wanted only for
- a Hub model: `model.source=hub` with an id that is not a local folder,
- a Hub data set: `data.source=hub`,
- W&B online: `logger.wandb_mode=online` (or `WANDB_MODE=online` in the environment).

Hugging Face. When neither model nor data needs the Hub, the run is local: `HF_HUB_OFFLINE`,
`HF_DATASETS_OFFLINE`, `TRANSFORMERS_OFFLINE` are set to 1, and the copies of these flags that
`huggingface_hub` and `datasets` read once at import are updated too when those modules are already
loaded (setting the variables alone is too late then). `datasets` would otherwise send a download-count
request for every held-out eval that goes through it. Hub telemetry (`HF_HUB_DISABLE_TELEMETRY`) and
`datasets`' download counts (`HF_UPDATE_DOWNLOAD_COUNTS`) are turned off in every run: they are never
needed for the run to work.

Decision on explicit user settings: a variable the user has set already is left as it is, whatever its
value (`HF_HUB_OFFLINE=0` means "I want the Hub": we honour it). Only unset variables get our values.

W&B. Unless the effective mode is `online`, `WANDB_MODE` is set to the configured mode (an existing
`WANDB_MODE` wins, as in `WandbLogger`) and
- `WANDB_ERROR_REPORTING=false`: wandb-core (a separate Go process, `wandb/bin/wandb-core`) is then
  started with `--no-observability` (wandb/sdk/lib/service/service_process.py), so it sends no
  error/OpenTelemetry reports, and the Python-side TelemetryRecorder is off
  (wandb/analytics/opentelemetry/opentelemetry_proxy.py: `env.error_reporting_enabled()`);
- `WANDB__DISABLE_STATS`, `WANDB__DISABLE_META`, `WANDB__DISABLE_MACHINE_INFO` (settings `x_disable_stats`,
  `x_disable_meta`, `x_disable_machine_info`; `WANDB__X` maps to setting `x_x`): no system-metrics
  sampler process (wandb-symon) and no metadata probes (cloud instance-metadata endpoints among them);
  `WandbLogger` passes the same settings to `wandb.Settings` (`wandb_offline_settings`);
- `WANDB_SILENT=true`.
Offline runs still write `<run>/wandb/offline-run-*/run-<id>.wandb`, so `wandb sync` uploads them later.
W&B talks to its own service over a unix socket (or loopback TCP on systems without unix sockets).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

LOCAL_MODEL_SOURCES = frozenset({"config", "gguf_package", "vision_base"})
HF_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
HF_ALWAYS = {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "false"}
WANDB_OFFLINE_ENV = {
    "WANDB_ERROR_REPORTING": "false",
    "WANDB__DISABLE_STATS": "true",
    "WANDB__DISABLE_META": "true",
    "WANDB__DISABLE_MACHINE_INFO": "true",
    "WANDB_SILENT": "true",
}
_TRUE = {"1", "ON", "YES", "TRUE"}


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None) if cfg is not None else None
    return default if cfg is None else cfg


def model_needs_hub(model_cfg: Any) -> bool:
    """A Hub id (model.source=hub and name_or_path is not an existing local folder)."""
    source = _get(model_cfg, "source", "hub")
    if source in LOCAL_MODEL_SOURCES:
        return False
    path = _get(model_cfg, "name_or_path", "")
    return not (path and Path(os.path.expanduser(str(path))).is_dir())


def data_needs_hub(data_cfg: Any) -> bool:
    return _get(data_cfg, "source") == "hub"


def run_is_local(cfg: Any) -> bool:
    """True when neither the model nor the data comes from the Hub."""
    return not model_needs_hub(_get(cfg, "model")) and not data_needs_hub(_get(cfg, "data"))


def wandb_mode(cfg: Any) -> str:
    """The mode W&B will run in: WANDB_MODE from the environment wins over logger.wandb_mode."""
    return os.environ.get("WANDB_MODE") or _get(cfg, "logger.wandb_mode", "offline")


def wandb_offline_settings(mode: str) -> dict[str, Any]:
    """Extra `wandb.Settings` keys for a run that is not online (empty when it is)."""
    if mode == "online":
        return {}
    return {"x_disable_stats": True, "x_disable_meta": True, "x_disable_machine_info": True}


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.upper() in _TRUE


def _sync_loaded_hf_modules() -> None:
    """huggingface_hub and datasets read these flags once, at import: refresh the loaded copies from
    the environment, the way they compute them at import."""
    hub_offline = bool(_flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE"))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = hub_offline
    dconfig = sys.modules.get("datasets.config")
    if dconfig is not None:
        ds_offline = _flag("HF_DATASETS_OFFLINE")
        dconfig.HF_HUB_OFFLINE = hub_offline if ds_offline is None else ds_offline
        dconfig.HF_DATASETS_OFFLINE = dconfig.HF_HUB_OFFLINE
        counts = _flag("HF_UPDATE_DOWNLOAD_COUNTS")
        dconfig.HF_UPDATE_DOWNLOAD_COUNTS = True if counts is None else counts


# what the previous call set, so a second job in the same process (a sweep, a test) starts clean
_applied: dict[str, str] = {}


def restore_network_env() -> None:
    """Undo what `configure_network` set (values the user changed since are left alone)."""
    for name, value in _applied.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    _applied.clear()
    _sync_loaded_hf_modules()


def configure_network(cfg: Any) -> dict[str, str]:
    """Set the environment so the run reaches the network only where `cfg` asks; returns what was set.

    Variables the user already set are kept (see the module docstring). Calling it again for another
    job first undoes what the previous call set.
    """
    restore_network_env()
    wanted: dict[str, str] = dict(HF_ALWAYS)
    if run_is_local(cfg):
        wanted.update({name: "1" for name in HF_OFFLINE_VARS})
    mode = wandb_mode(cfg)
    if mode != "online":
        wanted["WANDB_MODE"] = mode
        wanted.update(WANDB_OFFLINE_ENV)
    for name, value in wanted.items():
        if name not in os.environ:
            os.environ[name] = value
            _applied[name] = value
    _sync_loaded_hf_modules()
    return dict(_applied)
