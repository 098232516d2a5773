"""SPT block-sparse attention on the Triton kernels (triton_blocks.py) equals the PyTorch Function and dense
autograd attention on the same pattern: output, log-sum-exp, dq, dk, dv (GQA, key lengths not divisible
by the block, a KV-cache offset, left padding, -1 slots, a row with no valid key; fp32 tight, fp16 loose),
the model wiring, and the dispatcher (auto, torch, triton).

On the CPU the kernels run in Triton's interpreter, which works only when TRITON_INTERPRET is set before
triton is first imported (triton.language's own jit'd helpers, tl.zeros or tl.sum, are defined then),
and torch may import triton earlier in a test session. So on the CPU the kernel tests (`kernels`) run in
a child pytest process started with TRITON_INTERPRET=1 (test_kernel_tests_in_an_interpreter_process);
in this process they skip. The interpreter's bf16 tl.dot is wrong (a bf16 product comes back ~1e10 off),
so bf16 runs only on CUDA: SPARSETUNE_TEST_DEVICE=cuda (scripts/gpu_check.sh) runs the kernel tests
compiled on the GPU in-process, plus a larger bf16/fp16/fp32 check.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from sparsetune.errors import ConfigError
from sparsetune.methods.base import MethodContext
from sparsetune.methods.spt import SPT, SPTConfig, triton_blocks
from sparsetune.methods.spt.blocks import block_sparse_attention, select_key_blocks
from sparsetune.models.tiny import tiny_preset

ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("SPARSETUNE_TEST_DEVICE", "cpu")  # cuda: see scripts/gpu_check.sh
CHILD = os.environ.get("SPARSETUNE_TRITON_CHILD") == "1"  # the interpreter process started below
cuda_only = pytest.mark.skipif(DEVICE != "cuda" or not torch.cuda.is_available(),
                               reason="needs SPARSETUNE_TEST_DEVICE=cuda and a GPU")
kernels = pytest.mark.skipif(DEVICE == "cpu" and not CHILD,
                             reason="runs in the TRITON_INTERPRET=1 child (test_kernel_tests_in_an_interpreter_process)")
parent_only = pytest.mark.skipif(CHILD, reason="runs in the parent process")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture
def triton():
    return pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]' on Linux)")


def codes(b, h, s, seed):
    return torch.randint(0, 4, (b, h, s, 2), generator=torch.Generator().manual_seed(seed))


def dense_mask(idx, sq, sk, qb, kb, key_valid=None):
    """(B, H, S_q, S_k) bool: the selected blocks of each query block, causal, valid keys only."""
    b, h, nq, _ = idx.shape
    nk = math.ceil(sk / kb)
    sel = torch.zeros(b, h, nq, nk + 1, dtype=torch.bool, device=idx.device)
    sel.scatter_(-1, torch.where(idx >= 0, idx, nk).long(), True)
    mask = sel[..., :nk].repeat_interleave(qb, 2)[:, :, :sq].repeat_interleave(kb, 3)[..., :sk]
    pos = torch.arange(sk, device=idx.device)
    mask = mask & (pos[None, :] <= (sk - sq + torch.arange(sq, device=idx.device))[:, None])
    return mask if key_valid is None else mask & key_valid[:, None, None, :]


def dense(q, k, v, mask, scale):
    """Dense autograd attention restricted to mask (rows with no key: zeros) and its log-sum-exp."""
    g = q.shape[1] // k.shape[1]
    logits = (q @ k.repeat_interleave(g, 1).transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, -1).nan_to_num(0.0) @ v.repeat_interleave(g, 1), torch.logsumexp(logits, -1)


# name: (b, h, hkv, sq, sk, d, qb, kb, num_keys, left padding of row 1)
CASES = {
    "gqa_unused_slots": (2, 4, 2, 48, 48, 16, 16, 16, 32, 0),
    "sk_not_divisible_qb_ne_kb": (1, 2, 1, 45, 45, 16, 32, 16, 20, 0),
    "kv_cache": (1, 4, 2, 20, 53, 16, 16, 16, 20, 0),
    "left_padding_empty_rows": (2, 2, 2, 48, 48, 32, 16, 16, 32, 21),
}


def inputs(b, h, hkv, sq, sk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)
            for shape in ((b, h, sq, d), (b, hkv, sk, d), (b, hkv, sk, d))]


def compare(q, k, v, idx, qb, kb, key_valid, atol):
    """Triton vs the PyTorch Function and dense autograd, both in float64: out, lse, dq, dk, dv."""
    scale = q.shape[-1] ** -0.5
    sq, sk = q.shape[2], k.shape[2]
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qt, kt, vt, idx, scale, qb, kb, key_valid, kernel="triton")
    assert type(out.grad_fn).__name__ == "TritonBlockSparseAttentionFunctionBackward"
    assert out.dtype == q.dtype and out.shape == q.shape
    ref = block_sparse_attention(q64, k64, v64, idx, scale, qb, kb, key_valid, kernel="torch")
    want, want_lse = dense(q64, k64, v64, dense_mask(idx, sq, sk, qb, kb, key_valid), scale)
    assert torch.allclose(ref, want, atol=1e-10)  # the two references agree
    assert torch.allclose(out.double(), want, atol=atol)
    _, lse = triton_blocks.block_attention_forward(q, k, v, idx, scale, qb, kb, key_valid)
    lse = lse.view(lse.shape[0], lse.shape[1], -1)[:, :, :sq].double()
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))  # -inf exactly on the rows with no key
    assert torch.allclose(lse.nan_to_num(neginf=0.0), want_lse.nan_to_num(neginf=0.0), atol=atol)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.device)
    got = torch.autograd.grad(out, (qt, kt, vt), gout.to(out.dtype))
    for name, g, r, w in zip("qkv", got, torch.autograd.grad(ref, (q64, k64, v64), gout.double()),
                             torch.autograd.grad(want, (q64, k64, v64), gout.double())):
        assert g.dtype == q.dtype
        assert torch.allclose(r, w, atol=1e-10), name
        assert torch.allclose(g.double(), w, atol=atol), (name, float((g.double() - w).abs().max()))
    return out, got


@kernels
@pytest.mark.parametrize("case", list(CASES))
def test_triton_equals_pytorch_function_and_dense(triton, case):
    b, h, hkv, sq, sk, d, qb, kb, num_keys, pad = CASES[case]
    q, k, v = inputs(b, h, hkv, sq, sk, d, torch.float32)
    key_valid = None
    if pad:
        key_valid = torch.ones(b, sk, dtype=torch.bool, device=DEVICE)
        key_valid[1, :pad] = False
    idx = select_key_blocks(codes(b, h, sq, 1).to(DEVICE), codes(b, hkv, sk, 2).to(DEVICE), num_keys, 4, qb, kb,
                            key_valid)
    assert (idx < 0).any() or idx.shape[-1] < math.ceil(sk / kb)  # a real subset, or unused slots
    if pad:
        assert (idx[1, :, 0] < 0).all()  # row 1's first query block sees no valid key: zeros
    compare(q, k, v, idx, qb, kb, key_valid, atol=2e-5)


@kernels
def test_hand_made_slots_a_row_with_no_key_and_deterministic_backward(triton):
    """idx written out: head 0's first query block has no slot at all (zeros, lse -inf), -1 slots mixed
    with used ones; dk/dv come from the transposed index, so two backwards are bit-identical."""
    q, k, v = inputs(1, 2, 1, 32, 32, 16, torch.float32, seed=3)
    idx = torch.tensor([[[[-1, -1], [-1, 1]], [[-1, 0], [0, 1]]]], dtype=torch.int32, device=DEVICE)
    out, grads = compare(q, k, v, idx, 16, 16, None, atol=2e-5)
    assert torch.equal(out[0, 0, :16], torch.zeros_like(out[0, 0, :16]))
    _, again = compare(q, k, v, idx, 16, 16, None, atol=2e-5)
    assert all(torch.equal(a, b_) for a, b_ in zip(grads, again))


@kernels
def test_fp16_inputs_accumulate_in_fp32(triton):
    b, h, hkv, sq, sk, d, qb, kb, num_keys, _ = CASES["gqa_unused_slots"]
    q, k, v = inputs(b, h, hkv, sq, sk, d, torch.float16)
    idx = select_key_blocks(codes(b, h, sq, 1).to(DEVICE), codes(b, hkv, sk, 2).to(DEVICE), num_keys, 4, qb, kb)
    compare(q, k, v, idx, qb, kb, None, atol=1e-2)


def test_transpose_index_lists_each_selecting_query_block_once():
    idx = torch.tensor([[[[-1, 0], [0, 1]], [[-1, 1], [1, 2]]]], dtype=torch.int32)  # (1, 2 heads, 2, 2)
    offs, entries = triton_blocks.transpose_index(idx, hkv=1, nk=3)
    rows = [entries[offs[j]:offs[j + 1]].tolist() for j in range(3)]
    assert rows == [[0, 1], [1, 2, 3], [3]]  # entry = head * nQ + query block


# ------------------------------------------------------------------------------------- dispatch
def _small(dtype=torch.float32, d=16):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, d, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3))
    return q, k, v, select_key_blocks(codes(1, 2, 32, 1), codes(1, 2, 32, 2), 16, 4, 16, 16)


def _kind(out) -> str:
    return type(out.grad_fn).__name__.removesuffix("Backward")


def test_auto_on_cpu_without_the_interpreter_is_the_pytorch_function_and_triton_refuses(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, idx = _small()
    out = block_sparse_attention(q, k, v, idx, 0.25, 16, 16)
    assert _kind(out) == "BlockSparseAttentionFunction"
    assert torch.equal(out, block_sparse_attention(q, k, v, idx, 0.25, 16, 16, kernel="torch"))
    assert not triton_blocks.triton_usable(q, 16, 16)
    with pytest.raises(ConfigError, match="attention_kernel=triton cannot run here: tensors on cpu"):
        block_sparse_attention(q, k, v, idx, 0.25, 16, 16, kernel="triton")
    with pytest.raises(ConfigError, match="attention_kernel"):
        block_sparse_attention(q, k, v, idx, 0.25, 16, 16, kernel="cuda")


@kernels
def test_auto_picks_triton_where_usable_and_falls_back_on_shapes_it_refuses(triton):
    q, k, v, idx = _small()
    q, k, v = (t.detach().to(DEVICE).requires_grad_() for t in (q, k, v))
    idx = idx.to(DEVICE)
    assert triton_blocks.triton_usable(q, 16, 16)
    assert _kind(block_sparse_attention(q, k, v, idx, 0.25, 16, 16)) == "TritonBlockSparseAttentionFunction"
    refused = [(_small(d=8)[:3], 16, 16, "head dim 8"), (_small(torch.float64)[:3], 16, 16, "dtype torch.float64")]
    for (q2, k2, v2), qb, kb, why in refused:
        q2, k2, v2 = (t.to(DEVICE) for t in (q2, k2, v2))
        assert _kind(block_sparse_attention(q2, k2, v2, idx, 0.25, qb, kb)) == "BlockSparseAttentionFunction"
        with pytest.raises(ConfigError, match=why):
            block_sparse_attention(q2, k2, v2, idx, 0.25, qb, kb, kernel="triton")
    assert not triton_blocks.triton_usable(q, 8, 16) and not triton_blocks.triton_usable(q, 16, 24)
    with pytest.raises(ValueError, match="query_block=8"):
        triton_blocks.triton_block_sparse_attention(q, k, v, idx, 0.25, 8, 16)


@parent_only
def test_without_triton_auto_is_pytorch_and_the_module_imports(monkeypatch):
    monkeypatch.setattr(triton_blocks, "_triton", lambda: None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the device check (nothing runs: no kernel is defined)
    q, k, v, idx = _small()
    assert not triton_blocks.triton_usable(q, 16, 16)
    assert _kind(block_sparse_attention(q, k, v, idx, 0.25, 16, 16)) == "BlockSparseAttentionFunction"
    with pytest.raises(ConfigError, match="triton is not installed"):
        block_sparse_attention(q, k, v, idx, 0.25, 16, 16, kernel="triton")
    code = ("import sys; sys.modules['triton'] = None\n"  # import triton -> ImportError
            "import torch\nfrom sparsetune.methods.spt import blocks, triton_blocks\n"
            "assert triton_blocks.unusable_reason(torch.zeros(1, 1, 16, 16), 16, 16) == 'triton is not installed'\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=300)


def test_config_key_defaults_to_auto_and_refuses_others():
    from sparsetune.config.schema import check_choices

    assert SPTConfig().attention_kernel == "auto"
    with pytest.raises(ConfigError, match="attention_kernel"):
        check_choices(SPTConfig, SPTConfig(attention_kernel="cuda"), "method")


# ------------------------------------------------------------------------------------- model wiring
def _model(kernel: str):
    model = tiny_preset("llama", 0).to(device=DEVICE).eval()  # head_dim 16, 4 heads over 2 kv heads
    method = SPT(SPTConfig(warmup_ratio=0.0, routed_ffn=False, kmeans_init=False, attention_selection="block",
                           top_l_ratio=0.4, min_keys=1, query_block=16, key_block=16, attention_kernel=kernel))
    method.apply(model, MethodContext.of(model))
    return model


@kernels
def test_model_with_triton_kernel_equals_torch_kernel(triton):
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[1, 29:] = 0
    runs = {}
    for kernel in ("torch", "triton"):
        model = _model(kernel)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        runs[kernel] = (logits, grads)
    (lt, gt), (lx, gx) = runs["torch"], runs["triton"]
    assert torch.allclose(lx, lt, atol=1e-4) and len(gx) == len(gt) > 0
    assert all(torch.allclose(a, b_, atol=1e-5) for a, b_ in zip(gx, gt))


def test_model_with_kernel_triton_where_it_cannot_run_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_preset("llama", 0).eval()
    method = SPT(SPTConfig(warmup_ratio=0.0, routed_ffn=False, kmeans_init=False, attention_selection="block",
                           query_block=16, key_block=16, attention_kernel="triton"))
    method.apply(model, MethodContext.of(model))
    with pytest.raises(ConfigError, match="attention_kernel=triton"):
        model(input_ids=torch.zeros(1, 20, dtype=torch.long))


# ------------------------------------------------------------------------------------- CUDA, compiled
@cuda_only
@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d,qb,kb", [(64, 64, 64), (128, 32, 32), (64, 16, 64)])
def test_cuda_compiled_kernels_equal_pytorch_at_model_sizes(triton, dtype, d, qb, kb):
    """No interpreter: the compiled kernels against the PyTorch Function in float64, S not divisible by the
    blocks, GQA 8/2, left padding; error relative to the largest reference value."""
    assert not triton_blocks.interpreting()
    b, h, hkv, s = 2, 8, 2, 300
    q, k, v = inputs(b, h, hkv, s, s, d, dtype, seed=5)
    key_valid = torch.ones(b, s, dtype=torch.bool, device=DEVICE)
    key_valid[1, :37] = False
    idx = select_key_blocks(codes(b, h, s, 1).cuda(), codes(b, hkv, s, 2).cuda(), s // 4, 4, qb, kb, key_valid)
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qt, kt, vt, idx, d ** -0.5, qb, kb, key_valid, kernel="triton")
    ref = block_sparse_attention(q64, k64, v64, idx, d ** -0.5, qb, kb, key_valid, kernel="torch")
    gout = torch.randn(out.shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}[dtype]
    pairs = [(out, ref), *zip(torch.autograd.grad(out, (qt, kt, vt), gout.to(dtype)),
                              torch.autograd.grad(ref, (q64, k64, v64), gout.double()))]
    for name, (got, want) in zip(("out", "dq", "dk", "dv"), pairs):
        err = float((got.double() - want).abs().max() / want.abs().max())
        assert err < tol, (name, err)


# ------------------------------------------------------------------------------------- timing script
@parent_only
def test_timing_script_smoke_runs_on_the_interpreter(triton, tmp_path):
    out = tmp_path / "timing.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "spt_triton_timing.py"), "--smoke", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=600)
    got = json.loads(out.read_text())
    assert got["smoke"] and got["rows"]
    for row in got["rows"]:
        assert row["triton_ms"] > 0 and row["torch_block_ms"] > 0 and row["sdpa_ms"] > 0
        assert row["max_abs_diff_vs_torch_block"] < 1e-4


# ------------------------------------------------------------------------------------- the interpreter child
@pytest.mark.skipif(DEVICE != "cpu" or CHILD, reason="the CPU parent process starts the child")
def test_kernel_tests_in_an_interpreter_process(triton, tmp_path):
    """Run this file again in a fresh process with TRITON_INTERPRET=1 set before triton is imported; every
    `kernels` test but the CUDA one must pass there (fp32, fp16, dispatch, the model)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "SPARSETUNE_TRITON_CHILD": "1", "PYTHONPATH": str(ROOT)}
    report = tmp_path / "child.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", __file__],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    cases = ElementTree.parse(report).getroot().iter("testcase")
    passed = {c.get("name").split("[")[0] for c in cases if not list(c)}  # no <skipped>/<failure> child
    wanted = {name for name, fn in globals().items() if name.startswith("test_")
              and any(m.name == "skipif" and m.kwargs.get("reason", "").startswith("runs in the TRITON_INTERPRET")
                      for m in getattr(fn, "pytestmark", []))
              and not any(m.kwargs.get("reason", "").startswith("needs SPARSETUNE_TEST_DEVICE")
                          for m in getattr(fn, "pytestmark", []))}
    assert len(wanted) == 5 and wanted <= passed, (wanted - passed, (run.stdout + run.stderr)[-3000:])
