"""Routed FFN (SPT): the FFN's neurons form n contiguous blocks; a router (linear + sigmoid) picks the
top-k blocks per token, and a gate c = 2·p per selected block lets the task loss train the router.

Where c acts (`gate_on`): "frozen" (the reference code, `ffn_gate: 2p`) multiplies c onto the frozen
gate, up and down projections' outputs of the block and leaves the LoRA paths unscaled,
g = c·(x W_g[b]ᵀ) + LoRA_g(x)[b], u = c·(x W_u[b]ᵀ) + LoRA_u(x)[b], out_b = c·(act(g)·u W_d[:, b]ᵀ) +
LoRA_d(act(g)·u); "block" (`ffn_gate: 2p_block`) multiplies the block's whole output, LoRA included.

Tokens are grouped per block by one sort, gathered with index_select, run through dense GEMMs on the
block's weight slices (frozen base + the block's LoRA slices) and summed back through the inverse
permutation (index_select + a sum over the k slots). The
only host sync is one bincount of the block sizes per forward (none per block).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """y = base(x) + (x A^T) B^T · alpha/r; base frozen, B starts at zero (the paper's LoRA on every linear)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        self.r, self.scaling = int(r), float(alpha) / int(r)
        w = base.weight
        a = torch.empty(self.r, base.in_features)
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform(a=sqrt(5)) like PEFT's default
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r, device=w.device, dtype=torch.float32))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        return self.base(x) + F.linear(F.linear(x, a), b) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_B @ self.lora_A).to(self.base.weight.dtype) * self.scaling


def _parts(lin: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """(frozen weight, bias, LoRA (A, B, scaling) or None) of a plain or LoRA-wrapped linear."""
    if isinstance(lin, LoRALinear):
        return lin.base.weight, lin.base.bias, (lin.lora_A, lin.lora_B, lin.scaling)
    return lin.weight, lin.bias, None


def _rows(x: torch.Tensor, lin: nn.Module, ch: slice, xa: torch.Tensor | None,
          c: torch.Tensor | None = None, xc: torch.Tensor | None = None) -> torch.Tensor:
    """Output channels `ch` of linear `lin` on x (LoRA's x A^T precomputed as xa). With c (n, 1) the
    frozen part (weight and bias) is scaled by c, computed as xc W^T + c·bias with xc = c·x: a frozen
    weight's GEMM saves nothing for backward, and c·x saves x, which LoRA keeps anyway."""
    w, bias, lora = _parts(lin)
    if c is None:
        y = F.linear(x, w[ch], None if bias is None else bias[ch])
    else:
        y = F.linear(xc, w[ch]) if bias is None else F.linear(xc, w[ch]) + c * bias[ch]
    if lora is not None:
        y = y + F.linear(xa, lora[1][ch].to(x.dtype)) * lora[2]
    return y


def _cols(h: torch.Tensor, lin: nn.Module, ch: slice, c: torch.Tensor | None = None) -> torch.Tensor:
    """Contribution of input channels `ch` (h holds just those) to linear `lin`, without its bias; c (n, 1),
    if given, scales the frozen part only, applied to h (linear): autograd then keeps the (n x width) h,
    not an (n x d_model) output, for the multiply."""
    w, _, lora = _parts(lin)
    y = F.linear(h if c is None else h * c, w[:, ch])
    if lora is not None:
        a, b, scale = lora
        y = y + F.linear(F.linear(h, a[:, ch].to(h.dtype)), b.to(h.dtype)) * scale
    return y


def _lora_in(x: torch.Tensor, lin: nn.Module) -> torch.Tensor | None:
    _, _, lora = _parts(lin)
    return None if lora is None else F.linear(x, lora[0].to(x.dtype))


GATE_ON = ("frozen", "block")


def routed_ffn(x: torch.Tensor, mlp: nn.Module, blocks: int, top_idx: torch.Tensor, gates: torch.Tensor,
               gate_on: str = "frozen") -> torch.Tensor:
    """Gated-FFN output on tokens x (T, d) using only each token's selected blocks.

    mlp has gate_proj / up_proj / down_proj (plain or LoRALinear) and act_fn; top_idx (T, k) block ids,
    gates (T, k) their scales c, applied as `gate_on` says (module docstring). With unit gates both
    forms are the dense FFN restricted to the selected blocks; with every block selected, mlp(x).
    """
    if gate_on not in GATE_ON:
        raise ValueError(f"gate_on: {gate_on!r} is not one of {GATE_ON}")
    frozen = gate_on == "frozen"
    t, k = top_idx.shape
    width = mlp.up_proj.out_features // blocks
    blk = top_idx.reshape(-1)
    order = torch.argsort(blk, stable=True)
    tok = torch.div(order, k, rounding_mode="floor")  # (T*k,) token of each sorted slot
    gate_sorted = gates.reshape(-1).index_select(0, order)
    sizes = torch.bincount(blk, minlength=blocks).tolist()  # the one host sync
    xs = x.index_select(0, tok)
    xa_gate, xa_up = _lora_in(xs, mlp.gate_proj), _lora_in(xs, mlp.up_proj)
    outs, start = [], 0
    for b, n in enumerate(sizes):
        if n == 0:
            continue
        seg, ch = slice(start, start + n), slice(b * width, (b + 1) * width)
        rows, c = xs[seg], gate_sorted[seg, None].to(x.dtype)
        cf, xc = (c, rows * c) if frozen else (None, None)
        g = _rows(rows, mlp.gate_proj, ch, None if xa_gate is None else xa_gate[seg], cf, xc)
        u = _rows(rows, mlp.up_proj, ch, None if xa_up is None else xa_up[seg], cf, xc)
        h = mlp.act_fn(g) * u
        # "block": c on the down projection's input scales the block's whole output (the down bias is
        # added once below)
        outs.append(_cols(h, mlp.down_proj, ch, c) if frozen else _cols(h * c, mlp.down_proj, ch))
        start += n
    # back to (token, slot) order and sum the k slots: index_select + sum keep only the index for
    # backward (index_add_ would save the (T*k, d) source)
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
    y = torch.cat(outs).index_select(0, inverse).view(t, k, -1).sum(1)
    bias = _parts(mlp.down_proj)[1]
    return y if bias is None else y + bias


class RoutedMLP(nn.Module):
    """Replaces a block's gated MLP: `.mlp` is the stock module (linears possibly LoRA-wrapped),
    `.router` the trained Linear(d_model, n_blocks). Dense mode is the stock MLP."""

    def __init__(self, mlp: nn.Module, hidden: int, cfg: Any, state: Any, generator: torch.Generator | None = None,
                 layer: int = 0):
        super().__init__()
        self.mlp = mlp
        self.layer = layer
        self.cfg = cfg
        self.state = state
        self.blocks, self.top_k = int(cfg.ffn_blocks), int(cfg.ffn_top_k)
        w = mlp.up_proj.weight
        router = nn.Linear(hidden, self.blocks)
        with torch.no_grad():
            router.weight.copy_(torch.randn(router.weight.shape, generator=generator) * float(cfg.router_init_std))
            router.bias.zero_()  # sigmoid(0) = 0.5: gates c = 2p start near 1
        self.router = router.to(device=w.device, dtype=torch.float32)
        self.usage: torch.Tensor | None = None  # fraction of tokens per block, last routed forward

    @property
    def gate_on(self) -> str:
        """Where the gates act: the block's whole output for "2p_block", the frozen paths otherwise ("ste"
        has the gradient of the reference's 2p)."""
        return "block" if self.cfg.ffn_gate == "2p_block" else "frozen"

    def route(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-k block ids, gates) per token: gates 2p, or 1 with 2p's gradient (ffn_gate "ste")."""
        p = torch.sigmoid(F.linear(x2, self.router.weight.to(x2.dtype), self.router.bias.to(x2.dtype)))
        top_p, top_idx = p.topk(self.top_k, dim=-1)
        gates = 2.0 * top_p
        if self.cfg.ffn_gate == "ste":
            gates = gates - gates.detach() + 1.0
        return top_idx, gates

    @torch.no_grad()
    def _collect(self, x: torch.Tensor) -> None:
        """Calibration: the FFN input and, per token, a score per block (higher = keep): 1 for the blocks
        of the k-subset whose summed output is closest to the full FFN output, else 0 (C(n, k) <= 256
        subsets are enumerated; beyond that, the block output norms)."""
        m = self.mlp
        x2 = x.reshape(-1, x.shape[-1])
        h = m.act_fn(m.gate_proj(x2)) * m.up_proj(x2)
        w = m.down_proj.weight
        width = w.shape[1] // self.blocks
        parts = torch.stack([F.linear(h[:, b * width:(b + 1) * width], w[:, b * width:(b + 1) * width])
                             for b in range(self.blocks)], 1)  # (T, n, d)
        subsets = list(itertools.combinations(range(self.blocks), self.top_k))
        if len(subsets) <= 256:
            full = parts.sum(1)
            err = torch.stack([(full - parts[:, list(c)].sum(1)).norm(dim=-1) for c in subsets], -1)  # (T, S)
            best = torch.tensor(subsets, device=x.device)[err.argmin(-1)]  # (T, k)
            norms = torch.zeros(parts.shape[:2], device=x.device).scatter_(1, best, 1.0)
        else:
            norms = parts.norm(dim=-1)
        pick = torch.randperm(x2.shape[0], device=x2.device)[: int(self.cfg.codebook_tokens)]
        self.state.collect.setdefault(("ffn", self.layer), []).append((x2[pick].float().cpu(), norms[pick].float().cpu()))

    def fit_router(self, x: torch.Tensor, norms: torch.Tensor, steps: int = 200, lr: float = 1e-2) -> float:
        """Fit the router on calibration tokens so each token's top-k blocks by output norm get p = 1/2
        (gates 2p = 1: the routed FFN starts as the dense FFN restricted to those blocks) and the
        others p -> 0. Returns the fraction of tokens whose top-k set the router reproduces."""
        target = torch.zeros_like(norms)
        target.scatter_(1, norms.topk(self.top_k, -1).indices, 0.5)
        w = self.router.weight
        x, target = x.to(w.device), target.to(w.device)
        params = [self.router.weight, self.router.bias]
        opt = torch.optim.Adam(params, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.binary_cross_entropy_with_logits(self.router(x), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
        for p in params:
            p.grad = None
        with torch.no_grad():
            got = self.router(x).topk(self.top_k, -1).indices.sort(-1).values
            want = norms.to(w.device).topk(self.top_k, -1).indices.sort(-1).values
            return float((got == want).all(-1).float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.state.active(self.training):
            if self.state.collect is not None:
                self._collect(x)
            return self.mlp(x)
        x2 = x.reshape(-1, x.shape[-1])
        top_idx, gates = self.route(x2)
        with torch.no_grad():
            self.usage = torch.bincount(top_idx.reshape(-1), minlength=self.blocks).float() / max(1, x2.shape[0])
        return routed_ffn(x2, self.mlp, self.blocks, top_idx, gates, self.gate_on).view(*x.shape[:-1], -1)
