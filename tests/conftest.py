"""Offline, W&B-free test environment with a temporary HF home and run root."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def offline_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path_factory.mktemp("runs")))
    before = dict(os.environ)
    yield
    # jobs set network variables in-process (sparsetune.engine.offline): none may leak into the next test
    from sparsetune.engine import offline

    offline._applied.clear()
    for name in set(os.environ) - set(before):
        del os.environ[name]
    os.environ.update(before)
    offline._sync_loaded_hf_modules()
