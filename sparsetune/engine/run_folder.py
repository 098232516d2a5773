"""The run-folder contract: config.yaml, overrides.txt, metrics.jsonl, summary.json, checkpoints/,
export/, wandb/. Nothing already written in a run folder is overwritten, except by resuming it."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsetune.errors import UserError
from sparsetune.paths import runs_root


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @classmethod
    def create(cls, cfg, overrides: list[str], job: str) -> RunFolder:
        """A new folder `<root>/<YYYYmmdd-HHMMSS>-<recipe>`; suffixed `-2`, `-3`, … if that name is taken
        (also by a concurrent process: the folder is claimed by an atomic mkdir)."""
        from omegaconf import OmegaConf

        root = runs_root(cfg.run_dir)
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.recipe or job}"
        # mkdir is the claim: of several processes starting in the same second exactly one gets each
        # name, the others move on to the next suffix (never exists()-then-mkdir, which races)
        for n in range(1, 10_000):
            path = root / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise UserError(f"could not create a run folder under {root}: {stem} and 9,999 suffixes are taken")
        (path / "checkpoints").mkdir()
        run = cls(path)
        atomic_write_text(run.config_path, OmegaConf.to_yaml(cfg))
        atomic_write_text(path / "overrides.txt", " ".join([job, *overrides]) + "\n")
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path).expanduser().resolve()
        if not (path / "config.yaml").is_file():
            raise UserError(f"not a sparsetune run folder (no config.yaml): {path}")
        return cls(path)

    def load_raw_config(self):
        """config.yaml as stored; the jobs layer validates it against the schemas."""
        import yaml
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            cfg = OmegaConf.load(self.config_path)
        except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"{self.config_path} is not a readable config ({reason})") from None
        if not OmegaConf.is_dict(cfg):
            raise UserError(f"{self.config_path} is not a config mapping")
        return cfg

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str) + "\n")
