"""Measurement utilities: parameter counts with tied weights, CPU peak memory, timers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from sparsetune.engine.measure import (
    StepTimer,
    count_parameters,
    current_memory_mb,
    current_rss_mb,
    latency,
    peak_memory_mb,
    reset_peak_memory,
)
from sparsetune.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]


def _llama(tied: bool):
    spec = yaml.safe_load((ROOT / "recipes/model/tiny_llama.yaml").read_text())
    return build_tiny(spec["model_type"], {**spec["config"], "tie_word_embeddings": tied})


def test_tied_embedding_counted_once():
    tied, untied = _llama(True), _llama(False)
    emb = tied.model.embed_tokens.weight
    assert tied.lm_head.weight.data_ptr() == emb.data_ptr()
    by_module = sum(p.numel() for _, p in tied.named_parameters(remove_duplicate=False))
    _, total = count_parameters(tied)
    assert total == by_module - emb.numel()
    assert count_parameters(untied)[1] == total + emb.numel()


def test_shared_storage_in_separate_parameters_counted_once():
    a = torch.nn.Linear(8, 8, bias=False)
    b = torch.nn.Linear(8, 8, bias=False)
    b.weight = torch.nn.Parameter(a.weight.data)  # same storage, different Parameter object
    model = torch.nn.Sequential(a, b, torch.nn.Linear(8, 2))
    model[2].weight.requires_grad_(False)
    assert count_parameters(model) == (64 + 2, 64 + 16 + 2)


def test_trainable_counts_frozen_parameters():
    model = _llama(True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    assert count_parameters(model)[0] == model.model.norm.weight.numel()


def test_cpu_peak_memory_grows_with_allocation():
    reset_peak_memory("cpu")
    before = peak_memory_mb("cpu")
    # exceed the old peak even where the OS cannot reset it
    extra_mb = max(0.0, before - current_rss_mb()) + 192
    big = torch.ones(int(extra_mb * 1024 * 1024 / 4))  # written, so resident
    during = current_rss_mb()
    del big
    after = peak_memory_mb("cpu")
    assert after - before > 150
    assert during > after - 50  # the peak is this allocation
    assert current_rss_mb() < during - 150  # freed again: RSS drops, the peak stays


def test_current_memory_is_the_level_a_cpu_peak_is_measured_from():
    reset_peak_memory("cpu")
    level = current_memory_mb("cpu")
    big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, written
    assert current_memory_mb("cpu") - level > 50
    del big
    assert peak_memory_mb("cpu") - level > 50  # bench's step_memory_mb: peak minus the level before


def test_step_timer_median_skips_warmup():
    timer = StepTimer()
    for delay in (0.2, 0.0, 0.0, 0.02, 0.0):
        with timer.step():
            time.sleep(delay)
    assert len(timer) == 5 and timer.times[0] >= 0.2
    assert timer.median(skip_warmup=1) < 0.02
    assert timer.mean(skip_warmup=0) >= 0.044
    assert timer.median(skip_warmup=10) == timer.median()  # nothing left: fall back to all steps
    timer.start()
    assert timer.stop() >= 0
    with pytest.raises(RuntimeError):
        timer.stop()


def test_latency_stats():
    calls = []
    stats = latency(lambda: calls.append(time.sleep(0.001)), warmup=2, iters=5)
    assert len(calls) == 7
    assert 0.001 <= stats["median"] <= stats["p90"]
    assert stats["mean"] >= 0.001
