"""Offline means offline: a local run (local model, local data, W&B offline) makes no connection to
another host. A socket guard records every attempt to reach a non-loopback address; W&B's own service
(a unix socket, or loopback TCP) is allowed."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

from sparsetune.engine import offline
from sparsetune.engine.offline import configure_network, run_is_local, wandb_offline_settings
from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job as compose

torch.set_num_threads(1)
NET_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_MODE", "WANDB_ERROR_REPORTING",
            "WANDB__DISABLE_STATS", "WANDB__DISABLE_META", "WANDB__DISABLE_MACHINE_INFO", "HF_HUB_DISABLE_TELEMETRY",
            "HF_UPDATE_DOWNLOAD_COUNTS")


def _is_external(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("", "localhost") or host is None:
        return False
    try:
        return not ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return True  # a host name other than localhost: resolving it is already a network request


@pytest.fixture
def socket_guard(monkeypatch):
    """Refuse (and record) connections and name look-ups for anything but loopback and unix sockets."""
    attempts: list[str] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    getaddrinfo = socket.getaddrinfo

    def refuse(what: str):
        attempts.append(what)
        return OSError(f"test_offline: network access refused: {what}")

    def external(sock, address) -> bool:
        return sock.family != getattr(socket, "AF_UNIX", None) and isinstance(address, tuple) and \
            _is_external(address[0])

    def guarded_connect(self, address):
        if external(self, address):
            raise refuse(f"connect {address}")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if external(self, address):
            refuse(f"connect_ex {address}")
            return 111  # ECONNREFUSED
        return connect_ex(self, address)

    def guarded_create_connection(address, *args, **kwargs):
        raise refuse(f"create_connection {address}") if _is_external(address[0]) else \
            socket_create_connection(address, *args, **kwargs)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if _is_external(host):
            raise refuse(f"getaddrinfo {host}")
        return getaddrinfo(host, *args, **kwargs)

    socket_create_connection = socket.create_connection
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture
def clean_net_env(monkeypatch):
    """No network variables set (conftest sets the HF ones): the job must set them itself."""
    for name in NET_VARS:
        monkeypatch.delenv(name, raising=False)
    offline._applied.clear()


def test_socket_guard_sees_an_external_attempt(socket_guard):
    with pytest.raises(OSError, match="refused"):
        socket.create_connection(("203.0.113.1", 443), timeout=0.1)
    with socket.socket() as s:
        s.connect_ex(("203.0.113.1", 443))
    with pytest.raises(OSError, match="refused"):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(socket_guard) == 3


def test_local_runs_go_offline_and_hub_runs_do_not(clean_net_env, monkeypatch, tmp_path):
    cfg = compose(["model=tiny_llama", "data=synthetic_arith"])
    assert run_is_local(cfg)
    applied = configure_network(cfg)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert os.environ[name] == "1" and applied[name] == "1"
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_ERROR_REPORTING"] == "false"
    assert os.environ["WANDB__DISABLE_STATS"] == "true"
    # the default model (SmolLM2 from a pip package) and a local folder given as a Hub path are local
    assert run_is_local(compose([]))
    assert run_is_local(compose(["model.source=hub", f"model.name_or_path={tmp_path}"]))
    # a second job in the same process starts clean: a Hub model id turns the HF flags off again
    hub = compose(["model=tiny_llama", "model.source=hub", "model.name_or_path=HuggingFaceTB/SmolLM2-135M"])
    assert not run_is_local(hub)
    configure_network(hub)
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"  # telemetry stays off either way
    # a Hub data set needs the Hub too
    assert not run_is_local(compose(["model=tiny_llama", "data=alpaca_hub"]))


def test_explicit_user_settings_win(clean_net_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # "I want the Hub": left alone
    monkeypatch.setenv("WANDB_MODE", "online")
    applied = configure_network(compose(["model=tiny_llama", "data=synthetic_arith"]))
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_HUB_OFFLINE" not in applied
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "WANDB_ERROR_REPORTING" not in os.environ and "WANDB__DISABLE_STATS" not in os.environ
    assert wandb_offline_settings("online") == {}
    assert wandb_offline_settings("offline")["x_disable_stats"] is True


def test_loaded_hub_libraries_see_the_offline_flag(clean_net_env):
    """huggingface_hub and datasets read the flag at import: already loaded, they must still go offline."""
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False
    datasets.config.HF_HUB_OFFLINE = False
    configure_network(compose(["model=tiny_llama", "data=synthetic_arith"]))
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert datasets.config.HF_HUB_OFFLINE is True and datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is False


def test_train_eval_and_forget_reach_no_other_host(clean_net_env, socket_guard, monkeypatch, tmp_path):
    """Default logger settings with W&B really running offline; train + held-out eval, then forget."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = ["logger.backends=[jsonl,wandb]", "logger.wandb_mode=offline"]
    ov = ["model=tiny_llama", "data=synthetic_arith", *logger, "trainer.threads=1", "trainer.batch_size=4",
          "trainer.max_steps=2", "trainer.eval_every=2", "trainer.save_every=0", f"run_dir={tmp_path / 'train'}"]
    summary = run_job(compose(ov), ov)
    assert summary["eval"], summary  # the held-out eval ran
    assert socket_guard == [], socket_guard
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["WANDB_ERROR_REPORTING"] == "false"
    run = next((tmp_path / "train").iterdir())
    # W&B still writes its offline run for `wandb sync`
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), list(run.rglob("*"))

    ov = ["recipe=gslora_vit", "model=tiny_vit", "data=digits", "forget.classes=[[0,1]]", "forget.data_ratio=0.2",
          *logger, "trainer.threads=1", "trainer.epochs=null", "trainer.max_steps=2", "trainer.eval_every=2",
          "trainer.warmup_steps=0", "eval.batch_size=200", f"run_dir={tmp_path / 'forget'}"]
    summary = run_job(compose(ov), ov, "forget")
    assert summary["tasks"]
    run = next((tmp_path / "forget").iterdir())
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert socket_guard == [], socket_guard
