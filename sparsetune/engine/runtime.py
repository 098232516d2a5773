"""Process-wide set-up every job and benchmark worker shares: quiet libraries, seeds, the device."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from sparsetune.errors import ConfigError


def quiet_libraries() -> None:
    """Our progress bar and tables replace transformers' per-load bars and deprecation chatter."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def apply_threads(threads: int | None) -> None:
    """trainer.threads for every job, eval included: torch's intra-op pool is sized once per process,
    and on a shared machine its default (every core) spins against the other jobs' threads."""
    if threads:
        torch.set_num_threads(int(threads))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available")
    return name
