"""Entry point of one benchmark variant process: `python -m sparsetune.bench.worker SPEC_JSON`.
Prints one JSON line of metrics on stdout."""

from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    from sparsetune.config import compose

    cfg = compose(spec["overrides"])
    module, fn = spec["measure"].split(":")
    metrics = getattr(importlib.import_module(module), fn)(cfg, spec["settings"])
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
