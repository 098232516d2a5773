"""Learning-rate schedules built by transformers.get_scheduler: the same lr sequence as the closed form
(and the former home-made schedule), exact resume of the scheduler state, unknown names rejected."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sparsetune.engine.optim import SCHEDULES, build_scheduler, lr_factor
from sparsetune.errors import ConfigError

LR = 2e-4


def lrs(schedule: str, warmup: int, total: int, groups: int = 1) -> list[float]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    opt = torch.optim.AdamW([{"params": [p]} for p in params], lr=LR)
    sched = build_scheduler(opt, SimpleNamespace(schedule=schedule, warmup_steps=warmup), total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == out[-1] for g in opt.param_groups)
        opt.step()
        sched.step()
    return out


def closed_form(schedule: str, step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "constant": 1.0}[schedule]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup,total", [(0, 10), (4, 10), (10, 100), (3, 3), (1, 7)])
def test_lr_sequence_is_the_closed_form_and_the_former_schedule(schedule, warmup, total):
    got = lrs(schedule, warmup, total, groups=2)
    for step, lr in enumerate(got):
        # the former LambdaLR(lr_factor) sequence, to the last bit but rounding of (T-s)/(T-W) vs 1-(s-W)/(T-W)
        assert lr == pytest.approx(LR * lr_factor(step, warmup, total, schedule), rel=1e-12, abs=1e-18)
        assert lr == pytest.approx(LR * closed_form(schedule, step, warmup, total), rel=1e-12, abs=1e-18)


def test_warmup_starts_at_lr_over_warmup_not_zero():
    assert lrs("linear", 4, 10)[:5] == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR, LR])


def test_more_transformers_schedules_build():
    assert lrs("cosine_with_restarts", 2, 10) == pytest.approx(lrs("cosine", 2, 10))
    poly = lrs("polynomial", 2, 10)
    assert poly[:2] == pytest.approx([LR / 2, LR]) and poly[-1] < poly[2]
    inv = lrs("inverse_sqrt", 4, 10)
    assert inv[4] == pytest.approx(LR * math.sqrt(4 / 4)) and inv[8] == pytest.approx(LR * math.sqrt(4 / 8))


def test_scheduler_state_round_trips_for_exact_resume():
    full = lrs("cosine", 3, 12)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=LR)
    tcfg = SimpleNamespace(schedule="cosine", warmup_steps=3)
    sched = build_scheduler(opt, tcfg, 12)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    resumed = build_scheduler(opt2, tcfg, 12)  # the engine's order: build, then TrainLoop.restore loads
    opt2.load_state_dict(opt.state_dict())
    resumed.load_state_dict(state)
    rest = []
    for _ in range(7):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        resumed.step()
    assert rest == full[5:]


@pytest.mark.parametrize("name", ["cosine_annealing", "reduce_lr_on_plateau", ""])
def test_unknown_schedule_is_a_config_error_listing_valid_names(name):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ConfigError) as err:
        build_scheduler(opt, SimpleNamespace(schedule=name, warmup_steps=2), 10)
    message = str(err.value)
    assert "\n" not in message and all(valid in message for valid in SCHEDULES)


def test_polynomial_below_its_end_lr_is_a_config_error():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-8)
    with pytest.raises(ConfigError):
        build_scheduler(opt, SimpleNamespace(schedule="polynomial", warmup_steps=0), 10)


# ------------------------------------------------------------------ trainer.num_workers (BatchStream)

def _stream(num_workers: int, state=None):
    from sparsetune.engine.loop import BatchStream, LoopState

    data = list(range(23))  # 5 batches of 4 per epoch, 3 examples left out each epoch

    def collate(items):
        return {"x": torch.tensor(items)}

    return BatchStream(data, collate, 4, seed=3, state=state or LoopState(), num_workers=num_workers)


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_keep_the_seeded_order_and_the_exact_resume_position(workers):
    from dataclasses import replace

    plain = [_stream(0).next()["x"].tolist() for _ in range(1)]
    ref_stream, stream = _stream(0), _stream(workers)
    ref = [ref_stream.next()["x"].tolist() for _ in range(13)]
    got = [stream.next()["x"].tolist() for _ in range(13)]
    assert got == ref and got[0] == plain[0]
    assert (stream.state.epoch, stream.state.batch_index) == (ref_stream.state.epoch, ref_stream.state.batch_index)
    # a checkpoint taken now resumes in a fresh stream at exactly the next batch
    resumed = _stream(workers, replace(stream.state))
    tail = [ref_stream.next()["x"].tolist() for _ in range(4)]
    assert [resumed.next()["x"].tolist() for _ in range(4)] == tail
    # TrainLoop.restore rewrites the state of a stream that has already prefetched: stale batches are dropped
    stream.state.epoch, stream.state.batch_index = 0, 2
    assert stream.next()["x"].tolist() == ref[2]
    stream.close()


# ------------------------------------------------------------------ trainer.group_by_length

def test_grouped_batches_hold_similar_lengths_the_same_items_and_resume_exactly():
    from dataclasses import replace

    from sparsetune.engine.loop import BatchStream, LoopState, grouped_by_length

    gen = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(5, 300, (1000,), generator=gen)]
    order = torch.randperm(1000, generator=gen).tolist()
    grouped = grouped_by_length(order, lengths, 8, torch.Generator().manual_seed(1), window=16)
    assert sorted(grouped) == list(range(1000))  # a permutation: the same items per epoch

    def padded(o):  # tokens a batch of 8 pads to: 8 x its longest item, over the full batches
        return sum(8 * max(lengths[i] for i in o[b:b + 8]) for b in range(0, len(o) // 8 * 8, 8))

    assert padded(grouped) < 0.7 * padded(order)
    again = grouped_by_length(order, lengths, 8, torch.Generator().manual_seed(1), window=16)
    assert again == grouped  # seeded: every rank and every resume sees the same order
    # batch order is shuffled (not longest first throughout)
    firsts = [lengths[grouped[b]] for b in range(0, 8 * 20, 8)]
    assert firsts != sorted(firsts, reverse=True)

    def collate(items):
        return {"x": torch.tensor(items)}

    items = list(range(1000))
    ref = BatchStream(items, collate, 8, seed=5, state=LoopState(), lengths=lengths)
    batches = [ref.next()["x"].tolist() for _ in range(130)]  # past the epoch end (125 batches)
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) < 40 for b in batches[:125])
    resumed = BatchStream(items, collate, 8, seed=5, state=replace(ref.state), lengths=lengths)
    assert [resumed.next()["x"].tolist() for _ in range(3)] == [ref.next()["x"].tolist() for _ in range(3)]
    plain = BatchStream(items, collate, 8, seed=5, state=LoopState())
    assert plain.next()["x"].tolist() != batches[0]


def test_text_dataset_records_each_items_truncated_length():
    from sparsetune.data.text import TextDataset
    from sparsetune.data.types import Example
    from sparsetune.jobs.config import compose_job
    from sparsetune.models.tiny import byte_tokenizer

    examples = [Example(prompt="a " * n, answer=" b", task="t") for n in (3, 40, 200)]
    ds = TextDataset(examples, byte_tokenizer(), max_length=64, template="none")
    assert list(ds.lengths) == [len(ds[i]["input_ids"]) for i in range(3)] and ds.lengths[2] == 64
    assert compose_job(["trainer.group_by_length=true"]).trainer.group_by_length is True
