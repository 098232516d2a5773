"""`python -m sparsetune.models.prefetch`: convert the default offline model once (make install)."""

from __future__ import annotations

from sparsetune.config import compose
from sparsetune.models.loading import gguf_cache


def main() -> None:
    cfg = compose([])
    if cfg.model.source == "gguf_package":
        print(f"default model cached at {gguf_cache(cfg.model)}")


if __name__ == "__main__":
    main()
