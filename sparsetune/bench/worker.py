"""Entry point of one benchmark variant process: `python -m sparsetune.bench.worker SPEC_JSON`.
Prints one JSON line of metrics on stdout."""

from __future__ import annotations

import importlib
import json
import sys

import torch

from sparsetune.engine.offline import configure_network
from sparsetune.engine.runtime import quiet_libraries, resolve_device, seed_everything
from sparsetune.jobs.config import compose_job


def worker_setup(cfg, settings: dict) -> str:
    """Quiet libraries, thread count, seeds; returns the device every measurement runs on."""
    quiet_libraries()
    threads = settings.get("threads") or cfg.trainer.threads
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    return resolve_device(cfg.trainer.device)


def main() -> None:
    spec = json.loads(sys.argv[1])
    cfg = compose_job(spec["overrides"])

    configure_network(cfg)  # a local benchmark reaches no other host (Hub flags, W&B)
    module, fn = spec["measure"].split(":")
    metrics = getattr(importlib.import_module(module), fn)(cfg, spec["settings"])
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
