"""Kernels against their references on fresh random inputs.

On a machine without CUDA the Triton kernels run under TRITON_INTERPRET=1 (slow: small shapes);
tests marked gpu run the compiled kernels at VAR-ST's real sizes (`nox -s test-gpu`).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the @triton.jit decorations
triton = pytest.importorskip("triton")

# imported after TRITON_INTERPRET is set: the kernels are decorated at import time
from var_st.kernels import (  # noqa: E402
    cached_scale_attention,
    nearest_code,
    nearest_code_reference,
    scale_causal_attention,
    scale_causal_attention_reference,
    scale_causal_mask,
    scale_kv_end,
    use_kernels,
)
from var_st.kernels.triton_attention import prefix_attention_triton  # noqa: E402
from var_st.kernels.triton_vq import nearest_code_triton, prepare_codebook  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu


def fresh_generator():
    # Fresh inputs every run, but the seed is printed so a failure can be replayed.
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


def assert_same_argmin(idx, x, codebook, rel_gap=1e-4):
    """idx must equal the fp64 argmin except where the two best fp64 distances are within rel_gap."""
    x64, c64 = x.double().cpu(), codebook.double().cpu()
    d = torch.cdist(x64, c64) ** 2
    two = d.topk(2, dim=1, largest=False).values if d.shape[1] > 1 else torch.cat([d, d + 1], 1)
    ref = d.argmin(1)
    near_tie = (two[:, 1] - two[:, 0]) <= rel_gap * two[:, 0].clamp_min(1e-12)
    wrong = (idx.cpu() != ref) & ~near_tie
    assert not wrong.any(), f"{int(wrong.sum())} of {len(idx)} indices differ from fp64 beyond near-ties"
    # Where it differs on a near-tie, the chosen code must itself be one of the near-best.
    chosen = d.gather(1, idx.cpu()[:, None]).squeeze(1)
    assert torch.all(chosen <= two[:, 0] * (1 + rel_gap) + 1e-9)


# ----------------------------------------------------------------------------------- VQ
@pytest.mark.parametrize("n,k,d", [(1, 5, 16), (37, 50, 20), (130, 333, 33), (257, 1000, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nearest_code_kernel_matches_fp64(n, k, d, dtype):
    g = fresh_generator()
    x = torch.randn(n, d, generator=g).to(dtype).to(DEV)
    c = torch.randn(k, d, generator=g).to(dtype).to(DEV)
    idx, dist = nearest_code_triton(x, c, return_dist=True)
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert_same_argmin(idx, x, c)
    ref_dist = ((x.double() - c.double()[idx]) ** 2).sum(1)
    # |c|^2 - 2 x.c + |x|^2 with ~16-bit products (bf16 hi/lo split for fp32, exact for 16-bit
    # inputs) and fp32 sums: the error is relative to the summed magnitudes, not to the distance.
    scale = (x.double() ** 2).sum(1) + (c.double()[idx] ** 2).sum(1)
    assert torch.all((dist.double() - ref_dist).abs() <= 5e-5 * scale + 1e-6)


@pytest.mark.parametrize("block_n,block_k", [(16, 16), (32, 64), (64, 16)])
def test_nearest_code_tile_sizes_agree(block_n, block_k):
    # Every tiling sweeps the same codebook: identical indices and distances.
    g = fresh_generator()
    x, c = torch.randn(45, 40, generator=g).to(DEV), torch.randn(300, 40, generator=g).to(DEV)
    one = nearest_code_triton(x, c, return_dist=True)
    other = nearest_code_triton(x, c, return_dist=True, block_n=block_n, block_k=block_k)
    assert torch.equal(one[0], other[0]) and torch.allclose(one[1], other[1], rtol=1e-6)
    assert_same_argmin(other[0], x, c)


def test_nearest_code_ties_pick_lowest_index():
    g = fresh_generator()
    c = torch.randn(70, 24, generator=g)
    c[65] = c[3]  # duplicate codeword in a later tile
    x = c[[3, 3, 10]] + 0.0
    for block_k in (16, 64):
        idx = nearest_code_triton(x.to(DEV), c.to(DEV), block_k=block_k)
        assert idx.tolist()[:2] == [3, 3] and idx[2].item() == 10


@pytest.mark.parametrize("k,d", [(1, 5), (45, 33), (300, 128)])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_codebook_prep_kernel_matches_torch(k, d, x_dtype):
    # One launch gives what five torch ops gave: |c|^2 in fp32 and the operand(s) of the argmin kernel.
    g = fresh_generator()
    c = (torch.randn(k, d, generator=g) * 3).to(DEV)
    hi, lo, norm = prepare_codebook(c, x_dtype)
    assert torch.allclose(norm, (c.double() ** 2).sum(1).float(), rtol=1e-5, atol=1e-5)
    # On the GPU the casts round to nearest even, exactly as torch; Triton's CPU interpreter
    # truncates instead, so there only the error bounds (which hold for both roundings) are checked.
    exact = DEV == "cuda"
    if x_dtype == torch.float32:
        assert hi.dtype == lo.dtype == torch.bfloat16
        assert ((hi.double() - c.double()).abs() <= c.double().abs() * 2 ** -7).all()  # one bf16 ulp
        # hi + lo carries ~16 mantissa bits of c (15 with truncation)
        assert ((hi.double() + lo.double() - c.double()).abs() <= c.double().abs() * 2 ** -15).all()
        if exact:
            assert torch.equal(hi, c.to(torch.bfloat16)) and torch.equal(lo, (c - hi.float()).to(torch.bfloat16))
    else:
        ulp = 2 ** -7 if x_dtype == torch.bfloat16 else 2 ** -10
        # plus the spacing of the format's subnormals, where the relative bound does not hold (fp16: 2**-24,
        # reached by |c| < 6e-5, a few times in a thousand runs of 38,400 values)
        tiny = torch.finfo(x_dtype).smallest_normal * ulp
        assert hi.dtype == x_dtype and ((hi.double() - c.double()).abs() <= c.double().abs() * ulp + tiny).all()
        if exact:
            assert torch.equal(hi, c.to(x_dtype))


def test_nearest_code_dispatch_on_cpu_is_reference():
    g = fresh_generator()
    x, c = torch.randn(40, 12, generator=g), torch.randn(30, 12, generator=g)
    assert torch.equal(nearest_code(x, c), nearest_code_reference(x, c))


# ---------------------------------------------------------------------------- attention
def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("scales,dh", [((1, 2, 5, 13), 20), ((1, 3, 7, 40), 80), ((4,), 16), ((2, 9), 96), ((3, 30), 64)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_prefix_kernel_matches_masked_reference(scales, dh, dtype, tol):
    g = fresh_generator()
    L = sum(scales)
    q, k, v = (torch.randn(2, 3, L, dh, generator=g).to(dtype).to(DEV) for _ in range(3))
    ref = scale_causal_attention_reference(q.double(), k.double(), v.double(), scales)
    out = prefix_attention_triton(q, k, v, scale_kv_end(scales, q.device), block_m=16, block_n=16)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < tol


def test_prefix_kernel_non_contiguous_inputs():
    # q, k, v sliced out of one fused projection, as attention layers produce them.
    g = fresh_generator()
    scales, dh, H = (1, 2, 9), 16, 2
    L = sum(scales)
    qkv = torch.randn(2, L, 3, H, dh, generator=g).to(DEV)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out = prefix_attention_triton(q, k, v, scale_kv_end(scales, q.device), block_m=16, block_n=16)
    assert rel_err(out, scale_causal_attention_reference(q, k, v, scales)) < 1e-5


def test_cached_decode_step_matches_full_attention():
    g = fresh_generator()
    q = torch.randn(2, 4, 7, 24, generator=g).to(DEV)
    k, v = (torch.randn(2, 4, 19, 24, generator=g).to(DEV) for _ in range(2))
    kv_end = torch.full((7,), 19, dtype=torch.int32, device=DEV)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert rel_err(prefix_attention_triton(q, k, v, kv_end, block_m=16, block_n=16), ref) < 1e-5
    with torch.no_grad():
        assert rel_err(cached_scale_attention(q, k, v), ref) < 1e-5


@pytest.mark.parametrize("scales", [(1, 8, 32, 200), (1, 2, 3), (5,)])
def test_dispatch_with_gradients_matches_reference(scales):
    # Training goes through SDPA with the mask on every device: gradients must be the reference's.
    g = fresh_generator()
    L = sum(scales)
    q, k, v = (torch.randn(2, 2, L, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(2, 2, L, 16, generator=g, dtype=torch.float64)
    mask = scale_causal_mask(scales)
    dense = torch.softmax((q @ k.transpose(-1, -2)) / 4.0 + torch.where(mask, 0.0, float("-inf")), -1) @ v
    grads_ref = torch.autograd.grad((dense * w).sum(), (q, k, v))
    out = scale_causal_attention(q, k, v, scales)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    assert torch.allclose(out, dense, atol=1e-12)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_mask_and_kv_end_agree():
    scales = (1, 8, 32, 200)
    mask = scale_causal_mask(scales)
    kv_end = scale_kv_end(scales)
    # Each row of the mask is exactly a prefix of length kv_end.
    assert torch.equal(mask, torch.arange(241)[None, :] < kv_end[:, None].long())
    assert mask.sum().item() == 1 + 8 * 9 + 32 * 41 + 200 * 241


def test_mask_and_kv_end_are_built_once_per_scales_and_device():
    # Built on the CPU and cached: the training step must not rebuild (and sync on) them per layer.
    scales = [1, 3, 9]
    assert scale_causal_mask(scales, DEV) is scale_causal_mask((1, 3, 9), DEV)
    assert scale_kv_end(scales, DEV) is scale_kv_end((1, 3, 9), DEV)
    assert scale_causal_mask(scales, DEV).device.type == DEV
    ids = torch.tensor([0, 1, 1, 1] + [2] * 9)
    assert torch.equal(scale_causal_mask(scales).cpu(), ids[None, :] <= ids[:, None])
    assert scale_kv_end(scales).tolist() == [1, 4, 4, 4] + [13] * 9


def test_dispatch_can_be_forced_off():
    g = fresh_generator()
    q, k, v = (torch.randn(1, 2, 11, 16, generator=g).to(DEV) for _ in range(3))
    try:
        use_kernels(False)
        off = scale_causal_attention(q, k, v, (1, 2, 8))
    finally:
        use_kernels(True)
    assert torch.allclose(off, scale_causal_attention_reference(q, k, v, (1, 2, 8)))


# ------------------------------------------------------------------- GPU, real sizes
@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_nearest_code_var_st_size(dtype):
    g = fresh_generator()
    x = torch.randn(64 * 241, 128, generator=g).to(dtype).cuda()
    c = torch.randn(4096, 128, generator=g).to(dtype).cuda()
    assert_same_argmin(nearest_code(x, c), x, c)


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [64, 512, 2048, 12800])
def test_gpu_nearest_code_per_scale_sizes(n):
    # var-st's per-scale calls at batch 64: below MIN_ROWS_FOR_KERNEL the matmul path, above it the kernel
    g = fresh_generator()
    x, c = torch.randn(n, 128, generator=g).cuda(), torch.randn(4096, 128, generator=g).cuda()
    assert_same_argmin(nearest_code(x, c), x, c)
    assert_same_argmin(nearest_code_triton(x, c), x, c)


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_attention_var_st_size_all_paths():
    g = fresh_generator()
    scales = (1, 8, 32, 200)
    q, k, v = (torch.randn(64, 8, 241, 80, generator=g).to(torch.bfloat16).cuda() for _ in range(3))
    ref = scale_causal_attention_reference(q.float(), k.float(), v.float(), scales)
    with torch.no_grad():
        assert rel_err(scale_causal_attention(q, k, v, scales), ref) < 1e-2  # Triton path
    out = scale_causal_attention(q.requires_grad_(), k, v, scales)  # training: SDPA with the mask
    assert rel_err(out.detach(), ref) < 1e-2


# ------------------------------------------------------------------ fp32 pick-then-refine
def _clustered(g, n, k, d, spread):
    """Codes in tight clusters far from the origin: |x|^2 >> the distances, where bf16 ranking fails."""
    centres = torch.randn(max(1, k // 8), d, generator=g) * 4
    c = centres.repeat_interleave(8, 0)[:k] + spread * torch.randn(k, d, generator=g)
    x = c[torch.randint(0, k, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)
    return x, c


@pytest.mark.parametrize("spread", [1.0, 0.05])
def test_refine_certifies_or_hands_over(spread):
    """Random data: the bf16 ranking + exact re-score certifies most rows. Clustered codes far from the
    origin (spread 0.05: distances ~0.2 against |x|^2 ~ 800, bf16's error ~6, the three products' ~0.01):
    bf16 cannot rank them, the rows are flagged and the three-product sweep decides. Either way the answer
    is the fp64 argmin (near-ties excepted) and the distance is exact fp32."""
    from var_st.kernels import triton_vq

    g = fresh_generator()
    x, c = _clustered(g, 96, 200, 48, spread)
    x, c = x.to(DEV), c.to(DEV)
    c_hi, _, cnorm = prepare_codebook(c, torch.float32)
    best = torch.empty(len(x), device=DEV)
    idx = torch.empty(len(x), dtype=torch.int64, device=DEV)
    unsure = triton_vq.refine_pass(x, c, c_hi, cnorm, best, idx).bool().cpu()
    if spread == 1.0:
        assert unsure.float().mean() < 0.2
    else:
        assert unsure.float().mean() > 0.5
    x64, c64 = x.double().cpu(), c.double().cpu()
    d = ((x64[:, None] - c64[None]) ** 2).sum(-1)
    certain = ~unsure
    # a certified row is exact by itself (its own proof); the others are decided by the second sweep
    assert torch.equal(idx.cpu()[certain], d.argmin(1)[certain])
    out, dist = nearest_code_triton(x, c, return_dist=True, method="refine")
    assert_same_argmin(out, x, c)
    exact = d.gather(1, out.cpu()[:, None]).squeeze(1)
    assert torch.all((dist.double().cpu() - exact).abs() <= 1e-5 * (x64 ** 2).sum(1) + 1e-6)


def test_refine_and_hilo_agree():
    g = fresh_generator()
    x, c = torch.randn(130, 33, generator=g).to(DEV), torch.randn(333, 33, generator=g).to(DEV)
    assert torch.equal(nearest_code_triton(x, c, method="refine"), nearest_code_triton(x, c))
    with pytest.raises(ValueError, match="unknown method"):
        nearest_code_triton(x, c, method="tf32")
