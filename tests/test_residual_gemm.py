"""ESM-2's packed path with out_proj's and fc2's products added into the residual stream by
their GEMMs (models/residual_gemm.py, ESM2.residual_in_gemm): the same function as the plain
path; the stream updated in place, compiled without a copy; on the GPU, as close to fp32 as
the plain path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from virnucpro.models.esm2 import ESM2
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.predict.packing import pack_proteins

CUDA = torch.device("cuda", 0)


def _model(seed: int, **arch) -> ESM2:
    """A small ESM-2 whose out_proj and fc2 biases are as large as their outputs, so a bias
    lost, doubled or added in the wrong LayerNorm changes the result far beyond rounding."""
    torch.manual_seed(seed)
    esm = ESM2(**{"num_layers": 3, "embed_dim": 64, "attention_heads": 4, **arch}).eval()
    with torch.no_grad():
        for layer in esm.layers:
            for linear in (layer.self_attn.out_proj, layer.fc2):
                linear.bias.normal_(0.0, 1.0)
    return esm


def _batch(seed: int, device: str | torch.device = "cpu", longest: int = 60):
    from test_fast_path import random_proteins

    return pack_proteins(*encode_proteins(random_proteins(12, seed=seed, longest=longest))).to(device)


def _both(esm: ESM2, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, residual-in-GEMM) pooled embeddings of `batch`."""
    with torch.inference_mode():
        esm.residual_in_gemm = False
        plain = esm.pooled_packed(batch)
        esm.residual_in_gemm = True
        accumulated = esm.pooled_packed(batch)
    return plain, accumulated


def test_residual_in_gemm_computes_the_plain_packed_forward():
    """fp32 on the CPU: only the order of the additions differs ((x + a W^T) + b against
    x + (a W^T + b)), a few fp32 roundings of values of order 1 (~1e-7 each) per layer."""
    esm = _model(0)
    plain, accumulated = _both(esm, _batch(1))
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(accumulated, plain, rtol=1e-5, atol=1e-5)
    # the biases matter at this scale: without them the embeddings are far off
    with torch.no_grad():
        for layer in esm.layers:
            layer.fc2.bias.zero_()
    assert (_both(esm, _batch(1))[1] - accumulated).abs().max() > 1e-2


def test_accumulating_layer_updates_its_stream_in_place_and_compiles_without_a_copy():
    """The layer adds into its input x (the caller's tensor: no new stream each layer), and
    the compiled layer calls the op on that input itself: no clone of x, no copy back."""
    from torch._inductor.utils import run_and_get_code

    esm = _model(2, num_layers=1)
    layer = esm.layers[0]
    batch = _batch(3)
    cos_sin = esm.rotary.packed_cos_sin(batch)
    x = torch.randn(batch.tokens.shape[0], 64)
    bias = torch.randn(64)
    with torch.inference_mode():
        expected = layer.forward_packed(x + bias, batch, cos_sin)
        stream = x.clone()
        got, new_bias = layer.accumulate_packed(stream, bias, batch, cos_sin)
        assert got is stream
        torch.testing.assert_close(got + new_bias, expected, rtol=1e-5, atol=1e-5)

        stream = x.clone()
        compiled = torch.compile(layer.accumulate_packed, dynamic=True)
        try:  # compiled in this thread: a cold cache would otherwise leave a pool of threads
            with torch._inductor.config.patch(compile_threads=1):
                (got, new_bias), codes = run_and_get_code(compiled, stream, bias, batch, cos_sin)
        finally:
            torch._dynamo.reset()
    code = "\n".join(codes)
    assert code.count("torch.ops.virnucpro.accumulate_matmul.default(") == 2
    assert "clone(" not in code and ".copy_(" not in code  # (kernel names may say "copy")
    assert got.data_ptr() == stream.data_ptr()
    torch.testing.assert_close(got + new_bias, expected, rtol=1e-5, atol=1e-5)


def test_the_model_leaves_its_callers_tensors_alone():
    """The stream the layers update is the model's own (the embeddings it computes): the
    packed batch and the weights are what they were."""
    esm = _model(4)
    batch = _batch(5)
    tokens = batch.tokens.clone()
    weights = {name: p.clone() for name, p in esm.named_parameters()}
    first = _both(esm, batch)[1]
    assert torch.equal(batch.tokens, tokens)
    assert all(torch.equal(p, weights[name]) for name, p in esm.named_parameters())
    assert torch.equal(_both(esm, batch)[1], first)  # and a second call gives the same bits


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_residual_in_gemm_matches_fp32_as_closely_as_the_plain_path(dtype):
    """ESM-2 3B's width in half precision on the GPU. Both paths round the product and then
    the sum (cuBLAS rounds the product before it adds C: benchmarks/gemm_shapes.py); the
    in-place one rounds x - B instead of x, which can raise a row's rounding error bound by
    |B| / |x| (ESM2.deferred_bias_ratio). The biases here (0.1 x N(0, 1), ratio ~0.04 against
    these embeddings) allow a few percent; 25 % is the margin, and both paths must stay within
    the 1e-4 cosine every half-precision path meets."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    esm = _model(6, num_layers=2, embed_dim=2560, attention_heads=40).cuda()
    with torch.no_grad():
        for layer in esm.layers:
            for linear in (layer.self_attn.out_proj, layer.fc2):
                linear.bias.mul_(0.1)
    batch = _batch(7, CUDA, longest=200)
    with torch.inference_mode():
        reference = esm.pooled_packed(batch).double()
    half = esm.to(dtype)
    plain, accumulated = (t.double() for t in _both(half, batch))

    def error(got):
        return (got - reference).norm(dim=1) / reference.norm(dim=1)

    assert F.cosine_similarity(plain, reference, dim=1).min() > 0.9999
    assert F.cosine_similarity(accumulated, reference, dim=1).min() > 0.9999
    assert error(accumulated).max() <= 1.25 * error(plain).max()


def test_biases_that_would_dominate_the_stream_keep_the_plain_path(monkeypatch):
    """The path holds the biases apart from the stream; where they are large beside the
    embeddings (here: fc2 biases that cancel what the layers add, up to 100), the stream it
    stores would be large where the model's is small, and round worse. Placement measures
    that from the weights once they are in and keeps the plain path."""
    from virnucpro.predict import placement

    monkeypatch.setattr(placement, "fused_kernels", lambda *args: ("residual_in_gemm",))
    cpu = torch.device("cpu")
    small = _model(8)
    with torch.no_grad():
        for layer in small.layers:
            for linear in (layer.self_attn.out_proj, layer.fc2):
                linear.bias.mul_(0.01)
    assert small.deferred_bias_ratio() < placement.DEFERRED_BIAS_LIMIT
    placed = placement.EsmOnDevice(small.architecture, cpu, torch.float32)
    assert placed.module.residual_in_gemm  # chosen before the weights exist
    placed.fill(small)
    assert placed.module.residual_in_gemm

    large = _model(8)
    with torch.no_grad():
        large.layers[0].fc2.bias.fill_(100.0)
        large.layers[1].fc2.bias.fill_(-100.0)
    assert large.deferred_bias_ratio() > placement.DEFERRED_BIAS_LIMIT
    placed = placement.EsmOnDevice(large.architecture, cpu, torch.float32)
    placed.fill(large)
    assert not placed.module.residual_in_gemm
    batch = _batch(9)
    with torch.inference_mode():  # and it computes the model's function
        torch.testing.assert_close(placed.module.pooled_packed(batch), large.pooled_packed(batch),
                                   rtol=1e-5, atol=1e-5)


def test_ratio_bounds_the_error_the_held_apart_biases_add():
    """In bf16 on the CPU, with fc2 biases of growing size c that one hidden unit's product
    cancels (fc1 drives unit 0 to ~20, fc2 takes -c/20 of it into every channel): the model's
    stream stays small, the stream the in-GEMM path stores holds -c per layer. Its error
    against fp32 then grows far past the plain path's, and the ratio says so; at a ratio under
    the limit the two are alike (what the limit is for)."""
    from virnucpro.predict.placement import DEFERRED_BIAS_LIMIT

    def errors(c):
        esm = _model(10, num_layers=4, embed_dim=128, attention_heads=4)
        with torch.no_grad():
            for layer in esm.layers:
                layer.self_attn.out_proj.bias.zero_()
                layer.fc1.bias[0] = 20.0
                layer.fc2.weight[:, 0] = -c / 20.0
                layer.fc2.bias.fill_(c)
        batch = _batch(11)
        with torch.inference_mode():
            reference = esm.pooled_packed(batch).double()
        plain, accumulated = (t.double() for t in _both(esm.to(torch.bfloat16), batch))

        def err(got):
            return float(((got - reference).norm(dim=1) / reference.norm(dim=1)).max())
        return esm.deferred_bias_ratio(), err(plain), err(accumulated)

    ratio, plain, accumulated = errors(0.01)
    assert ratio < DEFERRED_BIAS_LIMIT and accumulated < 1.5 * plain, (ratio, plain, accumulated)
    ratio, plain, accumulated = errors(20.0)
    assert ratio > 10 * DEFERRED_BIAS_LIMIT and accumulated > 2 * plain, (ratio, plain, accumulated)
