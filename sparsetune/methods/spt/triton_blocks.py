"""Triton kernels for the block-sparse attention of blocks.py (forward and backward), same semantics.

Why: the PyTorch path gathers every selected key block into a (query_block x k*key_block) GEMM and
materialises its logits in memory. Here one program owns one query block of one head and streams its
selected key blocks through an online softmax in fp32 (FlashAttention-2 style), so only q, k, v, the
output and the log-sum-exp per query touch memory. Backward recomputes the probabilities: dq per query
block over its slots; dk/dv per key block over the (head, query block) pairs that selected it, read from
a transposed index built on the host (deterministic, no atomics).

Masking equals BlockSparseAttentionFunction: -1 slots, keys past S_k, padded keys (key_valid) and keys
after a query (query i sits at key position S_k - S_q + i) are -inf logits; a row with no valid key is
zeros (log-sum-exp -inf). GQA: head h reads key/value head h // (H // H_kv).

Triton is optional: it is imported on first use, never at import, so the CPU product runs without it;
the kernels are defined on first use too. TRITON_INTERPRET=1 runs them on CPU tensors through Triton's
interpreter (the tests), provided it is set before triton is first imported: triton.language's own jit'd
helpers (tl.zeros, tl.sum) are defined then.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCKS = (16, 32, 64, 128)  # query_block / key_block: powers of two >= 16 (tl.dot), <= 128 (registers)
HEAD_DIMS = (16, 32, 64, 128)


@functools.cache
def _triton():
    """The triton module, or None where it is not installed (looked up once)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError:
        return None
    return triton


def interpreting() -> bool:
    """TRITON_INTERPRET set: kernels run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def unusable_reason(q: torch.Tensor, query_block: int, key_block: int, k: torch.Tensor | None = None,
                    v: torch.Tensor | None = None) -> str | None:
    """Why the kernels cannot run these tensors (None: they can)."""
    if not (q.is_cuda or (q.device.type == "cpu" and interpreting())):
        return f"tensors on {q.device.type} (Triton runs on CUDA; TRITON_INTERPRET=1 runs it on the CPU)"
    if _triton() is None:
        return "triton is not installed"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (the kernels take float32, bfloat16 or float16)"
    if any(t is not None and t.dtype != q.dtype for t in (k, v)):
        return "q, k and v in different dtypes"
    d = q.shape[-1]
    if d not in HEAD_DIMS or (k is not None and k.shape[-1] != d) or (v is not None and v.shape[-1] != d):
        return f"head dim {d} (the kernels take q/k/v head dims equal and one of {HEAD_DIMS})"
    for name, n in (("query_block", query_block), ("key_block", key_block)):
        if int(n) not in BLOCKS:
            return f"{name}={n} (the kernels take one of {BLOCKS})"
    return None


def triton_usable(q: torch.Tensor, query_block: int, key_block: int) -> bool:
    """Triton importable, q on CUDA (or on the CPU under TRITON_INTERPRET) and the shape rules hold."""
    return unusable_reason(q, query_block, key_block) is None


@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    """Define the kernels (once per interpreter mode: triton.jit reads TRITON_INTERPRET when it decorates)."""
    del interpret  # the cache key only
    import triton
    import triton.language as tl

    @triton.jit
    def fwd(Q, K, V, IDX, KV, OUT, LSE, scale, H, G, SQ, SK, NQ, NSLOT,
            QB: tl.constexpr, KB: tl.constexpr, D: tl.constexpr, HAS_KV: tl.constexpr, PREC: tl.constexpr):
        iq, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        rows = iq * QB + tl.arange(0, QB)
        dims = tl.arange(0, D)
        q_at = bh.to(tl.int64) * SQ * D + rows[:, None] * D + dims[None, :]
        q = tl.load(Q + q_at, mask=rows[:, None] < SQ, other=0.0)
        kv_base = (b * (H // G) + h // G).to(tl.int64) * SK * D
        qpos = SK - SQ + rows
        m_i = tl.full([QB], float("-inf"), tl.float32)
        l_i = tl.zeros([QB], tl.float32)
        acc = tl.zeros([QB, D], tl.float32)
        for s in range(NSLOT):
            j = tl.load(IDX + (bh * NQ + iq) * NSLOT + s)
            if j >= 0:
                kpos = j * KB + tl.arange(0, KB)
                kin = kpos < SK
                kt = tl.load(K + kv_base + kpos[None, :] * D + dims[:, None], mask=kin[None, :], other=0.0)
                logits = tl.dot(q, kt, input_precision=PREC) * scale
                kok = kin
                if HAS_KV:  # padded keys
                    kok = kok & (tl.load(KV + b * SK + kpos, mask=kin, other=0) != 0)
                ok = kok[None, :] & (kpos[None, :] <= qpos[:, None])
                logits = tl.where(ok, logits, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(logits, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing valid yet
                p = tl.exp(logits - m_safe[:, None])
                alpha = tl.exp(m_i - m_safe)
                vb = tl.load(V + kv_base + kpos[:, None] * D + dims[None, :], mask=kin[:, None], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PREC)
                l_i = l_i * alpha + tl.sum(p, 1)
                m_i = m_new
        has = l_i > 0
        l_safe = tl.where(has, l_i, 1.0)
        tl.store(OUT + q_at, (acc / l_safe[:, None]).to(OUT.dtype.element_ty), mask=rows[:, None] < SQ)
        tl.store(LSE + bh * NQ * QB + rows, tl.where(has, m_i + tl.log(l_safe), float("-inf")))

    @triton.jit
    def bwd_dq(Q, K, V, IDX, KV, DO, LSE, DELTA, DQ, scale, H, G, SQ, SK, NQ, NSLOT,
               QB: tl.constexpr, KB: tl.constexpr, D: tl.constexpr, HAS_KV: tl.constexpr, PREC: tl.constexpr):
        iq, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        rows = iq * QB + tl.arange(0, QB)
        dims = tl.arange(0, D)
        q_at = bh.to(tl.int64) * SQ * D + rows[:, None] * D + dims[None, :]
        q = tl.load(Q + q_at, mask=rows[:, None] < SQ, other=0.0)
        do = tl.load(DO + q_at, mask=rows[:, None] < SQ, other=0.0)
        lse = tl.load(LSE + bh * NQ * QB + rows)
        lse = tl.where(lse == float("-inf"), 0.0, lse)
        delta = tl.load(DELTA + bh * NQ * QB + rows)
        kv_base = (b * (H // G) + h // G).to(tl.int64) * SK * D
        qpos = SK - SQ + rows
        dq = tl.zeros([QB, D], tl.float32)
        for s in range(NSLOT):
            j = tl.load(IDX + (bh * NQ + iq) * NSLOT + s)
            if j >= 0:
                kpos = j * KB + tl.arange(0, KB)
                kin = kpos < SK
                kt = tl.load(K + kv_base + kpos[None, :] * D + dims[:, None], mask=kin[None, :], other=0.0)
                vt = tl.load(V + kv_base + kpos[None, :] * D + dims[:, None], mask=kin[None, :], other=0.0)
                kok = kin
                if HAS_KV:  # padded keys
                    kok = kok & (tl.load(KV + b * SK + kpos, mask=kin, other=0) != 0)
                ok = kok[None, :] & (kpos[None, :] <= qpos[:, None])
                logits = tl.dot(q, kt, input_precision=PREC) * scale
                p = tl.where(ok, tl.exp(logits - lse[:, None]), 0.0)
                ds = p * (tl.dot(do, vt, input_precision=PREC) - delta[:, None])
                dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
        tl.store(DQ + q_at, (dq * scale).to(DQ.dtype.element_ty), mask=rows[:, None] < SQ)

    @triton.jit
    def bwd_dkdv(Q, K, V, KV, DO, LSE, DELTA, DK, DV, OFFS, ENTRIES, scale, H, G, SQ, SK, NQ, NK,
                 QB: tl.constexpr, KB: tl.constexpr, D: tl.constexpr, HAS_KV: tl.constexpr, PREC: tl.constexpr):
        jb, bk = tl.program_id(0), tl.program_id(1)  # key block, b * H_kv + kv head
        b = bk // (H // G)
        kpos = jb * KB + tl.arange(0, KB)
        dims = tl.arange(0, D)
        kin = kpos < SK
        k_at = bk.to(tl.int64) * SK * D + kpos[:, None] * D + dims[None, :]
        k = tl.load(K + k_at, mask=kin[:, None], other=0.0)
        v = tl.load(V + k_at, mask=kin[:, None], other=0.0)
        kok = kin
        if HAS_KV:  # padded keys
            kok = kok & (tl.load(KV + b * SK + kpos, mask=kin, other=0) != 0)
        dk = tl.zeros([KB, D], tl.float32)
        dv = tl.zeros([KB, D], tl.float32)
        start = tl.load(OFFS + bk * NK + jb)
        end = tl.load(OFFS + bk * NK + jb + 1)
        for t in range(start, end):
            e = tl.load(ENTRIES + t)  # query head * NQ + query block
            bh = b * H + e // NQ
            rows = (e % NQ) * QB + tl.arange(0, QB)
            rin = rows < SQ
            q_at = bh.to(tl.int64) * SQ * D + rows[:, None] * D + dims[None, :]
            q = tl.load(Q + q_at, mask=rin[:, None], other=0.0)
            do = tl.load(DO + q_at, mask=rin[:, None], other=0.0)
            lse = tl.load(LSE + bh * NQ * QB + rows)
            lse = tl.where(lse == float("-inf"), 0.0, lse)
            delta = tl.load(DELTA + bh * NQ * QB + rows)
            ok = kok[:, None] & rin[None, :] & (kpos[:, None] <= (SK - SQ + rows)[None, :])
            pt = tl.where(ok, tl.exp(tl.dot(k, tl.trans(q), input_precision=PREC) * scale - lse[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
            dst = pt * (tl.dot(v, tl.trans(do), input_precision=PREC) - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
        tl.store(DK + k_at, (dk * scale).to(DK.dtype.element_ty), mask=kin[:, None])
        tl.store(DV + k_at, dv.to(DV.dtype.element_ty), mask=kin[:, None])

    return SimpleNamespace(fwd=fwd, bwd_dq=bwd_dq, bwd_dkdv=bwd_dkdv)


def _launch_opts(q: torch.Tensor, query_block: int, key_block: int) -> dict:
    """Compile-time options: fp32 dots in IEEE precision (no TF32), more warps for large tiles."""
    warps = 8 if query_block * key_block >= 128 * 64 else 4
    return {"PREC": "ieee" if q.dtype == torch.float32 else "tf32", "num_warps": warps, "num_stages": 2}


def _on(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def transpose_index(idx: torch.Tensor, hkv: int, nk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (batch row, kv head, key block): the (query head * nQ + query block) entries that selected it,
    as CSR (offsets (B*H_kv*nK + 1,), entries) int32, in (head, query block) order: deterministic."""
    b, h, nq, _ = idx.shape
    dev = idx.device
    heads = torch.arange(h, device=dev)
    owner = (torch.arange(b, device=dev)[:, None] * hkv + heads[None, :] // (h // hkv)) * nk  # (B, H)
    key = owner[:, :, None, None] + idx.long()
    entry = (heads[:, None] * nq + torch.arange(nq, device=dev)[None, :])[None, :, :, None].expand_as(key)
    used = idx >= 0
    key, entry = key[used], entry[used]
    order = torch.sort(key, stable=True).indices
    offs = F.pad(torch.bincount(key, minlength=b * hkv * nk).cumsum(0), (1, 0))
    entries = F.pad(entry[order], (0, 1))  # never empty: a kernel argument needs storage
    return offs.to(torch.int32).contiguous(), entries.to(torch.int32).contiguous()


def _shapes(q, k, idx):
    b, h, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    return b, h, hkv, sq, sk, d, idx.shape[2], idx.shape[3]


def block_attention_forward(q, k, v, idx, scale: float, query_block: int, key_block: int,
                            key_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H, S_q, D) in q's dtype and log-sum-exp (B, H, nQ * query_block) fp32 (-inf: no key)."""
    reason = unusable_reason(q, query_block, key_block, k, v)
    if reason is not None:
        raise ValueError(f"triton block-sparse attention cannot run: {reason}")
    b, h, hkv, sq, sk, d, nq, nslot = _shapes(q, k, idx)
    q, k, v, idx = q.contiguous(), k.contiguous(), v.contiguous(), idx.to(torch.int32).contiguous()
    kv = idx if key_valid is None else key_valid.to(torch.int8).contiguous()  # idx: an unread stand-in
    out = torch.empty_like(q)
    lse = torch.empty(b, h, nq * query_block, dtype=torch.float32, device=q.device)
    with _on(q):
        _kernels(interpreting()).fwd[(nq, b * h)](
            q, k, v, idx, kv, out, lse, float(scale), h, h // hkv, sq, sk, nq, nslot,
            QB=query_block, KB=key_block, D=d, HAS_KV=key_valid is not None, **_launch_opts(q, query_block, key_block))
    return out, lse


class TritonBlockSparseAttentionFunction(torch.autograd.Function):
    """BlockSparseAttentionFunction's semantics on the Triton kernels; saves q, k, v, idx, out, lse."""

    @staticmethod
    def forward(ctx, q, k, v, idx, scale: float, query_block: int, key_block: int, key_valid):
        out, lse = block_attention_forward(q, k, v, idx, scale, query_block, key_block, key_valid)
        ctx.save_for_backward(q, k, v, idx, out, lse, key_valid)
        ctx.cfg = (scale, query_block, key_block)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, idx, out, lse, key_valid = ctx.saved_tensors
        scale, qb, kb = ctx.cfg
        b, h, hkv, sq, sk, d, nq, nslot = _shapes(q, k, idx)
        nk = max(1, math.ceil(sk / kb))
        q, k, v, idx = q.contiguous(), k.contiguous(), v.contiguous(), idx.to(torch.int32).contiguous()
        do = grad_out.contiguous()
        delta = F.pad((do.float() * out.float()).sum(-1), (0, nq * qb - sq)).contiguous()  # (B, H, nQ*qb)
        kv = idx if key_valid is None else key_valid.to(torch.int8).contiguous()
        opts = dict(QB=qb, KB=kb, D=d, HAS_KV=key_valid is not None, **_launch_opts(q, qb, kb))
        kern = _kernels(interpreting())
        dq = torch.empty_like(q)
        offs, entries = transpose_index(idx, hkv, nk)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        with _on(q):
            kern.bwd_dq[(nq, b * h)](q, k, v, idx, kv, do, lse, delta, dq, float(scale), h, h // hkv, sq, sk, nq,
                                     nslot, **opts)
            kern.bwd_dkdv[(nk, b * hkv)](q, k, v, kv, do, lse, delta, dk, dv, offs, entries, float(scale), h,
                                         h // hkv, sq, sk, nq, nk, **opts)
        return dq, dk, dv, None, None, None, None, None


def triton_block_sparse_attention(q, k, v, idx, scale: float, query_block: int, key_block: int,
                                  key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, S_q, D) attention over the key blocks in idx (select_key_blocks) on the Triton kernels."""
    kv = None if key_valid is None else key_valid.to(torch.bool)
    return TritonBlockSparseAttentionFunction.apply(q, k, v, idx, float(scale), int(query_block), int(key_block), kv)
