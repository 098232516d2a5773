"""head_cross_entropy == autograd through F.cross_entropy(head(h)): loss and every gradient."""

import pytest
import torch
import torch.nn.functional as F

from sparsetune.engine import head_loss
from sparsetune.engine.head_loss import head_cross_entropy


def _case(bias: bool, head_trains: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(16, 50, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 16, generator=gen))
        if bias:
            head.bias.copy_(torch.randn(50, generator=gen))
    head.requires_grad_(head_trains)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 50, (37,), generator=gen)
    return head, hidden, labels


def _reference(head, hidden, labels, cap):
    logits = head(hidden)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), labels, reduction="sum")


@pytest.mark.parametrize("bias,head_trains,cap", [(False, False, None), (False, True, None), (True, True, None),
                                                  (False, True, 3.0), (True, False, 3.0)])
def test_loss_and_grads_equal_autograd(monkeypatch, bias, head_trains, cap):
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 50 * 8)  # 8 rows per chunk: 5 chunks, a ragged last
    results = []
    for fn in (_reference, lambda h, x, y, c: head_cross_entropy(x, h, y, softcap=c)):
        head, hidden, labels = _case(bias, head_trains)
        loss = fn(head, hidden, labels, cap)
        (0.25 * loss).backward()  # a scalar upstream of the loss, as accumulation applies
        results.append((loss.detach(), hidden.grad, [p.grad for p in head.parameters()]))
    (l0, h0, p0), (l1, h1, p1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-6)
    for a, b in zip(p1, p0):
        assert (a is None) == (b is None) == (not head_trains)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_no_grad_computes_loss_only():
    head, hidden, labels = _case(False, True)
    with torch.no_grad():
        loss = head_cross_entropy(hidden, head, labels)
    torch.testing.assert_close(loss, _reference(head, hidden, labels, None).detach())
    assert not loss.requires_grad


def test_bf16_autocast_matches_autocast_reference():
    results = []
    for fn in (_reference, lambda h, x, y, c: head_cross_entropy(x, h, y, softcap=c)):
        head, hidden, labels = _case(False, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(head, hidden, labels, None)
        loss.backward()
        results.append((loss.detach(), hidden.grad, head.weight.grad))
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
