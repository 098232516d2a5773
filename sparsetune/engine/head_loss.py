"""Cross-entropy through the output head without keeping vocabulary-sized buffers for backward.

Plain autograd keeps the log-softmax of every labelled position (N x V, 192 MB for SmolLM2 at
4 x 256 tokens) and allocates two more N x V buffers in backward. Because the loss is the graph's
last node, its gradient is known up to one scalar already in the forward pass: this function walks
the labelled positions in chunks, and for each chunk computes the logits, the loss and the gradients
with respect to the hidden states (N x d) and, when the head trains, the head weight (V x d). Backward
only scales them. Same FLOPs as autograd, no recomputation, peak vocabulary-sized memory one chunk.
"""

from __future__ import annotations

from typing import Optional

import torch

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (8M fp32 values = 32 MB)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick for the head, so results match `head(hidden)`."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, cap, want_hidden, want_weight):
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            rows = max(1, CHUNK_ELEMENTS // w.shape[0])
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if want_hidden else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if (want_weight and bias is not None) else None
            for start in range(0, h.shape[0], rows):
                hs, ys = h[start:start + rows], labels[start:start + rows]
                z = torch.nn.functional.linear(hs, w, b).float()
                if cap:
                    t = torch.tanh(z / cap)
                    z = t * cap
                lse = torch.logsumexp(z, dim=-1)
                total += (lse - z.gather(1, ys[:, None]).squeeze(1)).sum()
                if not (want_hidden or want_weight):
                    continue
                gz = torch.softmax(z, dim=-1)  # d loss / d logits = softmax - onehot
                gz[torch.arange(len(ys), device=ys.device), ys] -= 1.0
                if cap:
                    gz *= 1.0 - t * t
                if want_hidden:
                    grad_h[start:start + rows] = (gz.to(dtype) @ w).to(hidden.dtype)
                if want_weight:
                    grad_w += gz.t() @ hs.float()
                    if grad_b is not None:
                        grad_b += gz.sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.layout = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        has_h, has_w, has_b = ctx.layout
        grad_h = next(saved) * grad_out.to(ctx.saved_tensors[0].dtype) if has_h else None
        grad_w = (next(saved) * grad_out).to(ctx.dtypes[0]) if has_w else None
        grad_b = (next(saved) * grad_out).to(ctx.dtypes[1]) if has_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def head_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                       softcap: Optional[float] = None) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` (optionally `cap·tanh(logits/cap)`) against `labels`.

    `hidden` is (N, d) for labelled positions only; `head` a Linear (tied or not). Gradients equal
    autograd's through `F.cross_entropy(head(hidden), labels, reduction="sum")`.
    """
    weight, bias = head.weight, getattr(head, "bias", None)
    grad_on = torch.is_grad_enabled()
    want_hidden = grad_on and hidden.requires_grad
    want_weight = grad_on and (weight.requires_grad or (bias is not None and bias.requires_grad))
    return _HeadCrossEntropy.apply(hidden, weight, bias, labels, softcap, want_hidden, want_weight)
