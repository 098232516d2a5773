"""Ctrl-C and SIGTERM during a checkpoint write (issue #22 item 4): the first waits for the write to
finish, a second stops at once and abandons it; either way nothing half-written is left and `latest`
names a complete checkpoint. Signals are sent to this very process, inside the write."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from sparsetune.engine.checkpoint import find_resumable, save_checkpoint
from sparsetune.engine.interrupts import critical, stop_on_signals
from sparsetune.errors import RunInterrupted


def _state(step: int) -> dict:
    return {"loop": {"step": step}, "model": {"w": torch.full((4,), float(step))},
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": []}}


def _signal_inside_the_write(monkeypatch, sig: int, times: int) -> None:
    import safetensors.torch

    real, calls = safetensors.torch.save_file, {"n": 0}

    def save_file(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # in the first of the checkpoint's two files
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.fixture(autouse=True)
def _sigint_default():
    """A background shell leaves SIGINT ignored; the guard keeps an ignored signal ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_finishes_the_checkpoint_then_stops(tmp_path, monkeypatch, sig, code):
    save_checkpoint(tmp_path, 1, _state(1))
    _signal_inside_the_write(monkeypatch, sig, times=1)
    with stop_on_signals(lambda what: f"{what} at step 2"), pytest.raises(RunInterrupted) as info:
        save_checkpoint(tmp_path, 2, _state(2))
    assert info.value.exit_code == code and str(info.value).endswith("at step 2")
    path, ckpt = find_resumable(tmp_path)
    assert path.name == "step-0000002" and float(ckpt["model"]["w"][0]) == 2.0  # the write was finished
    assert not list(tmp_path.glob(".*"))


def test_second_ctrl_c_abandons_the_write_at_once(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _state(1))
    _signal_inside_the_write(monkeypatch, signal.SIGINT, times=2)
    with stop_on_signals(), pytest.raises(RunInterrupted, match="twice") as info:
        save_checkpoint(tmp_path, 2, _state(2))
    assert info.value.exit_code == 130
    path, _ = find_resumable(tmp_path)
    assert path.name == "step-0000001"  # the abandoned step-2 never became `latest`
    assert not list(tmp_path.glob(".*")) and not (tmp_path / "step-0000002").exists()  # no debris


def test_outside_a_write_the_stop_is_immediate_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match=r"terminated \(SIGTERM\)"), stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode
            pass
    assert signal.getsignal(signal.SIGTERM) is before
    with critical():  # no guard: a no-op
        pass


def test_an_ignored_signal_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
