"""Which LoRA groups survive a task: the count the forget table and W&B report, and the heat map of
group norms per task x group (a PNG in the run folder, also handed to the logger)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch import nn

from sparsetune.eval.forgetting import group_norm_grid
from sparsetune.jobs.config import compose_job as compose
from sparsetune.jobs.forget import HEATMAP, report_groups, table_row
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.models import load_model

torch.set_num_threads(1)


def test_end_task_counts_exactly_zero_groups_as_gone():
    cfg = compose(["model=tiny_vit", "data=fashion_mnist", "method=gslora"])
    torch.manual_seed(0)
    model, _ = load_model(cfg.model)
    method = build_method(cfg.method)
    method.apply(model, MethodContext.of(model))
    method.start_task(model)
    with torch.no_grad():
        for name, w in method.wrapped.items():
            if method.targets[name][0] == 0:  # block 0: both adapters exactly zero
                w.lora_A.zero_()
            else:
                nn.init.normal_(w.lora_B, std=0.1)
        want = math.sqrt(sum(float((w.lora_A ** 2).sum() + (w.lora_B ** 2).sum())
                             for n, w in method.wrapped.items() if method.targets[n][0] == 1))
    report = method.end_task(model)
    assert report["groups_total"] == 2 and report["groups_surviving"] == 1
    assert report["surviving_groups"] == ["block1"]
    assert report["group_norms"]["block0"] == 0.0
    assert report["group_norms"]["block1"] == pytest.approx(want, rel=1e-5)
    assert table_row({**report, "task": 1})["groups"] == "1/2"


class Recorder:
    def __init__(self):
        self.images, self.tables = [], []

    def log_image(self, key, path, step=None):
        self.images.append((key, Path(path), step))

    def log_table(self, key, columns, rows, step=None):
        self.tables.append((key, list(columns), [list(r) for r in rows], step))


def test_heat_map_of_group_norms_per_task_is_written_and_logged(tmp_path):
    results = [
        {"task": 1, "classes": "1,4", "groups": {"groups_surviving": 2, "group_norms": {"block0": 0.0, "block1": 2.5, "block2": 1.0}}},
        {"task": 2, "classes": "5,7", "groups": {"groups_surviving": 1, "group_norms": {"block0": 0.0, "block1": 0.0, "block2": 3.0}}},
    ]
    names, grid = group_norm_grid([r["groups"] for r in results])
    assert names == ["block0", "block1", "block2"] and grid == [[0.0, 2.5, 1.0], [0.0, 0.0, 3.0]]
    log = Recorder()
    out = report_groups(results, tmp_path, log, step=7)
    png = tmp_path / HEATMAP
    pixels = matplotlib.image.imread(png)  # a readable PNG
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert log.images == [("forget/group_norms", png, 7)]
    assert log.tables == [("forget/group_norms", ["task", "classes", *names],
                           [[1, "1,4", 0.0, 2.5, 1.0], [2, "5,7", 0.0, 0.0, 3.0]], 7)]
    assert out["groups_surviving_per_task"] == [2, 1] and out["group_norms_png"] == HEATMAP


def test_no_heat_map_for_methods_without_groups(tmp_path):
    assert report_groups([{"task": 1, "classes": "0", "groups": {}}], tmp_path, object()) == {}
    assert not (tmp_path / HEATMAP).exists()


def test_groups_below_zero_below_are_snapped_to_exact_zero_before_the_merge():
    """The subgradient leaves unneeded groups at tiny norms: end_task sets those below zero_below x the
    largest group norm exactly to zero (so the merge leaves their block bit-identical) and counts them
    as gone; larger groups are untouched."""
    cfg = compose(["model=tiny_vit", "data=fashion_mnist", "method=gslora", "method.zero_below=0.01"])
    torch.manual_seed(0)
    model, _ = load_model(cfg.model)
    method = build_method(cfg.method)
    method.apply(model, MethodContext.of(model))
    method.start_task(model)
    base = {n: w.base.weight.detach().clone() for n, w in method.wrapped.items()}
    with torch.no_grad():
        for name, w in method.wrapped.items():
            if method.targets[name][0] == 0:
                w.lora_A.mul_(1e-3 / float(w.lora_A.norm()))  # block 0: a norm of ~1.4e-3 in all
                w.lora_B.zero_()
            else:
                nn.init.normal_(w.lora_B, std=0.1)
    report = method.end_task(model)
    assert report["groups_surviving"] == 1 and report["group_norms"]["block0"] == 0.0
    assert report["group_norms"]["block1"] > 0.14  # > 100x block 0's norm: block 0 is below the cut
    for name, (block, _, linear) in method.targets.items():
        assert torch.equal(linear.weight, base[name]) == (block == 0)


def test_snap_is_relative_to_the_largest_group():
    from sparsetune.methods.gslora.groups import Group, snap_to_zero

    small, big = nn.Parameter(torch.tensor([0.03, 0.04])), nn.Parameter(torch.tensor([6.0, 8.0]))  # 0.05, 10
    assert snap_to_zero([Group("s", [small]), Group("b", [big])], 0.004) == []  # 0.05 >= 0.004 * 10
    assert snap_to_zero([Group("s", [small]), Group("b", [big])], 0.01) == ["s"]  # 0.05 < 0.01 * 10
    assert torch.equal(small.detach(), torch.zeros(2)) and torch.equal(big.detach(), torch.tensor([6.0, 8.0]))
    assert snap_to_zero([Group("b", [big])], 0.0) == []
