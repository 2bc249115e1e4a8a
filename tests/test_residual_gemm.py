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
    """ESM-2 3B's width in half precision on the GPU: the in-place GEMM rounds the stream once
    where the plain path rounds the product and then the sum, so its error against the fp32
    model must not be larger than the plain path's (25 % margin for the different roundings
    of individual values), and both within the 1e-4 cosine every half-precision path meets."""
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
