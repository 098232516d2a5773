"""Partial backpropagation: a linear layer whose frozen weight carries one small trainable slice.

The layer computes y = x Wᵀ + b + (slice delta), where the delta Δ is
  col: Δ ∈ R[out, k] added to the input columns `idx` (y += x[..., idx] Δᵀ)   (o_proj, down_proj)
  row: Δ ∈ R[k, in]  added to the output rows `idx`   (y[..., idx] += x Δᵀ)  (v_proj, up_proj)
The base weight is never written, so an adapter is exactly {idx, Δ}. Keeping Δ separate (unfused)
also means Δ can be an fp32 master copy while the model runs in bf16: small updates are not lost
to bf16 rounding of W + Δ, and optimizer state exists only for Δ.

`SliceLinearFunction` saves only what Δ's gradient needs (x[..., idx] for a column slice; x for a
row slice, whose gradient reads every input), computes only Δ's gradient, and returns the full
input gradient through W + Δ. No gradient buffer is ever allocated for the frozen weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COL, ROW = "col", "row"


def contiguous_start(indices: torch.Tensor) -> int:
    """First index if `indices` is a run start..start+k-1 (cheap narrow), else -1 (index_select)."""
    k = indices.numel()
    if k == 0:
        return -1
    start = int(indices[0])
    return start if torch.equal(indices.cpu(), torch.arange(start, start + k)) else -1


def _take(t: torch.Tensor, indices: torch.Tensor, start: int) -> torch.Tensor:
    """t[..., indices] as a fresh contiguous tensor (a narrow view would keep all of t alive)."""
    if start >= 0:
        return t.narrow(-1, start, indices.numel()).contiguous()
    return t.index_select(-1, indices)


def _add_at_(t: torch.Tensor, indices: torch.Tensor, start: int, values: torch.Tensor) -> torch.Tensor:
    """t[..., indices] += values, in place."""
    if start >= 0:
        t.narrow(-1, start, indices.numel()).add_(values)
    else:
        t.index_add_(-1, indices, values)
    return t


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def slice_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, delta: torch.Tensor,
                 indices: torch.Tensor, start: int, kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward without autograd bookkeeping; returns (y, what Δ's gradient reads: x[..., idx] or x)."""
    xc = x.to(dtype)
    y = F.linear(xc, weight.to(dtype), None if bias is None else bias.to(dtype))
    d = delta.to(dtype)
    if kind == COL:
        xs = _take(xc, indices, start)
        return y.add_(F.linear(xs, d)), xs
    _add_at_(y, indices, start, F.linear(xc, d))
    return y, xc


class SliceLinearFunction(torch.autograd.Function):
    """y = linear(x, W + scatter(Δ), b) with gradients only for x and Δ."""

    @staticmethod
    def forward(ctx, x, weight, bias, delta, indices, start: int, kind: str):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            y, x_for_grad = slice_linear(x, weight, bias, delta, indices, start, kind, dtype)
        # the input gradient needs only W and Δ; Δ's gradient needs x[..., idx] (col) or x (row)
        ctx.save_for_backward(x_for_grad if ctx.needs_input_grad[3] else None, weight, delta, indices)
        ctx.start, ctx.kind, ctx.dtype, ctx.x_dtype = start, kind, dtype, x.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        saved, weight, delta, indices = ctx.saved_tensors
        start, kind, dtype = ctx.start, ctx.kind, ctx.dtype
        gx = gd = None
        with torch.autocast(gy.device.type, enabled=False):
            g = gy.to(dtype)
            if ctx.needs_input_grad[0]:
                gx = torch.matmul(g, weight.to(dtype))
                if kind == COL:
                    _add_at_(gx, indices, start, torch.matmul(g, delta.to(dtype)))
                else:
                    gx = gx + torch.matmul(_take(g, indices, start), delta.to(dtype))
                gx = gx.to(ctx.x_dtype)
            if ctx.needs_input_grad[3]:
                if kind == COL:  # [out, k] = gᵀ x[..., idx]
                    gd = g.reshape(-1, g.shape[-1]).t().mm(saved.reshape(-1, saved.shape[-1]))
                else:  # [k, in] = g[..., idx]ᵀ x
                    gs = _take(g, indices, start)
                    gd = gs.reshape(-1, gs.shape[-1]).t().mm(saved.reshape(-1, saved.shape[-1]))
                gd = gd.to(delta.dtype)
        return gx, None, None, gd, None, None, None


class S2FTLinear(nn.Module):
    """Drop-in for an nn.Linear: frozen shared weight/bias plus a delta on rows or columns `indices`."""

    def __init__(self, base: nn.Linear, kind: str, indices: torch.Tensor, delta: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32, trainable: bool = True):
        super().__init__()
        if kind not in (COL, ROW):
            raise ValueError(f"kind must be '{COL}' or '{ROW}', got {kind!r}")
        self.in_features, self.out_features, self.kind = base.in_features, base.out_features, kind
        self.weight = base.weight  # the same Parameter objects: no copy, tying and devices preserved
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.weight.device)
        self.register_buffer("indices", idx, persistent=False)
        self.start = contiguous_start(idx)
        shape = (self.out_features, idx.numel()) if kind == COL else (idx.numel(), self.in_features)
        if delta is None:
            delta = torch.zeros(shape, dtype=dtype, device=self.weight.device)
        elif tuple(delta.shape) != shape:
            raise ValueError(f"delta shape {tuple(delta.shape)} does not match {shape} for a {kind} slice")
        self.delta = nn.Parameter(delta.detach().to(device=self.weight.device, dtype=dtype).clone(),
                                  requires_grad=trainable)
        self.__dict__["base_linear"] = base  # not a submodule: restored by `unwrap`

    @property
    def slice_dim(self) -> int:
        """Weight dimension the indices address (1 = input columns, 0 = output rows)."""
        return 1 if self.kind == COL else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.delta.requires_grad):
            return SliceLinearFunction.apply(x, self.weight, self.bias, self.delta, self.indices, self.start, self.kind)
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            return slice_linear(x, self.weight, self.bias, self.delta, self.indices, self.start, self.kind, dtype)[0]

    def scattered_delta(self) -> torch.Tensor:
        """Δ placed in a zero tensor of the weight's shape (Δ's dtype)."""
        full = self.delta.new_zeros(self.weight.shape)
        full.index_copy_(self.slice_dim, self.indices, self.delta.detach())
        return full

    def merged_weight(self) -> torch.Tensor:
        """W with Δ added on the slice, in W's dtype (a new tensor; W is untouched)."""
        w = self.weight.detach().clone()
        acc = torch.promote_types(w.dtype, torch.float32)
        sl = w.index_select(self.slice_dim, self.indices).to(acc) + self.delta.detach().to(acc)
        w.index_copy_(self.slice_dim, self.indices, sl.to(w.dtype))
        return w

    def unwrap(self, merge: bool = False) -> nn.Linear:
        """The original nn.Linear, with Δ folded into its weight if `merge`."""
        base = self.__dict__["base_linear"]
        if merge:
            with torch.no_grad():
                base.weight.copy_(self.merged_weight())
        return base

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}, "
                f"k={self.indices.numel()}, contiguous={self.start >= 0}, delta_dtype={self.delta.dtype}")
