"""ESM-2's fc1 + GELU as one fused kernel (models/linear_gelu.py): where it applies, that the
layer computes the same function through it, and, on the GPU, that the Triton kernel matches
fp32 within one bf16 rounding, is deterministic, and gives each row the same bits whatever
else is in its batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from virnucpro.models import demo, linear_gelu
from virnucpro.models.esm2 import TransformerLayer
from virnucpro.models.linear_gelu import fused_applies

CUDA = torch.device("cuda", 0)


def test_fused_kernel_applies_only_to_half_precision_on_gpus_with_a_configuration(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("VIRNUCPRO_FUSED_GELU", raising=False)
    assert fused_applies(CUDA, torch.bfloat16, 2560, 10240)
    assert fused_applies(CUDA, torch.float16, 64, 256)
    assert not fused_applies(torch.device("cpu"), torch.bfloat16, 2560, 10240)
    assert not fused_applies(CUDA, torch.float32, 2560, 10240)  # the fp32 reference path
    assert not fused_applies(CUDA, torch.bfloat16, 2562, 10248)  # rows not 16-byte aligned for TMA
    monkeypatch.setenv("VIRNUCPRO_FUSED_GELU", "0")  # the user's switch
    assert not fused_applies(CUDA, torch.bfloat16, 2560, 10240)
    monkeypatch.delenv("VIRNUCPRO_FUSED_GELU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert not fused_applies(CUDA, torch.bfloat16, 2560, 10240)  # no measured configuration


@pytest.mark.parametrize("packed", [True, False])
def test_layer_through_the_fused_op_computes_the_same_function(packed):
    """The op's own CPU implementation is the unfused arithmetic, so the layer's output must
    not change by a bit when its flag routes fc1 + GELU through the op: this pins the wiring
    (the rows the op sees, the shape handed to fc2) for packed [N, D] and padded [B, T, D]."""
    torch.manual_seed(0)
    layer = TransformerLayer(64, 4).eval()
    shape = (37, 64) if packed else (3, 11, 64)
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = layer._feed_forward(x)
        layer.fused_fc1_gelu = True
        got = layer._feed_forward(x)
    assert torch.equal(got, expected)


def test_compiled_layer_calls_the_fused_op_as_one_node():
    """torch.compile sees the op through its fake implementation (shape and dtype only) and
    keeps it as one call in the graph."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch.manual_seed(0)
    layer = TransformerLayer(64, 4).eval()
    layer.fused_fc1_gelu = True
    backend = EagerAndRecordGraphs()
    x = torch.randn(29, 64)
    with torch.no_grad():
        got = torch.compile(layer._feed_forward, backend=backend, dynamic=True)(x)
        layer.fused_fc1_gelu = False
        expected = layer._feed_forward(x)
    graph = str(backend.graphs[0].graph)
    assert "virnucpro.linear_gelu" in graph and "gelu" not in graph.replace("linear_gelu", "")
    assert torch.equal(got, expected)
    torch._dynamo.reset()


def test_placing_esm_turns_the_fused_kernel_on_where_it_applies(monkeypatch):
    from virnucpro.predict import placement

    esm = demo.demo_esm()
    placed = placement.EsmOnDevice(esm.architecture, torch.device("cpu"), torch.float32)
    assert not any(layer.fused_fc1_gelu for layer in placed.module.layers)  # CPU, fp32
    monkeypatch.setattr(placement, "fused_applies", lambda *args: True)
    placed = placement.EsmOnDevice(esm.architecture, torch.device("cpu"), torch.float32)
    assert all(layer.fused_fc1_gelu for layer in placed.module.layers)
    # fp8's fc1 is an fp8 layer of its own: the bf16 kernel must not take its place
    placed = placement.EsmOnDevice(esm.architecture, torch.device("cpu"), torch.float32, fp8_keep=())
    assert not any(layer.fused_fc1_gelu for layer in placed.module.layers)


def test_triton_kernel_in_triton_interpreter():
    """The kernel's tiling and edges (rows, columns and K past a tile's edge) through Triton's
    CPU interpreter, in fp16 (its NumPy arithmetic has no bf16). Needs Triton, which CUDA
    builds of torch bring; the GPU tests below run the compiled kernel."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("Triton is not installed (CPU builds of torch do not bring it)")
    script = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from virnucpro.models.linear_gelu_kernel import launch
        torch.manual_seed(0)
        config = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)
        for m, k, n in [(70, 48, 80), (5, 32, 64), (33, 96, 40)]:
            x = torch.randn(m, k).half()
            w = (torch.randn(n, k) / k ** 0.5).half()
            b = torch.randn(n).half()
            ref = F.gelu(x.float() @ w.float().T + b.float())
            out = launch(x, w, b, config=config).float()
            assert out.shape == (m, n)
            assert ((out - ref).abs() <= ref.abs() * 2 ** -10 + 1e-4).all(), (m, k, n)
            plain = launch(x, w, b, config=config, gelu=False).float()
            assert ((plain - (x.float() @ w.float().T + b.float())).abs() <= 1e-2).all()
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def _inputs(m: int, k: int, n: int, seed: int, device=CUDA):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(torch.bfloat16)
    b = (torch.randn(n, generator=gen) * 0.1).to(torch.bfloat16)
    return x.to(device), w.to(device), b.to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1031, 2560, 10240), (77, 64, 256), (3, 2560, 10240)])
def test_gpu_fused_kernel_matches_fp32_within_one_bf16_rounding(m, k, n):
    """Against gelu(x W^T + b) in fp32 on the same bf16 inputs, the only differences are fp32
    summation order (~1e-6 relative) and the one rounding to bf16 (at most 2^-9 relative):
    within 2^-8 |ref| + 1e-5 everywhere. The unfused path rounds twice, so its worst error
    cannot be smaller."""
    if not fused_applies(CUDA, torch.bfloat16, k, n):
        pytest.skip("this GPU has no configuration for the fused kernel")
    x, w, b = _inputs(m, k, n, seed=m)
    ref = F.gelu(x.float() @ w.float().T + b.float())
    got = linear_gelu.linear_gelu(x, w, b).float()
    assert got.shape == (m, n)
    err = (got - ref).abs()
    assert (err <= ref.abs() * 2**-8 + 1e-5).all()
    unfused = F.gelu(F.linear(x, w, b), approximate="none").float()
    assert err.max() <= (unfused - ref).abs().max()


@pytest.mark.gpu
def test_gpu_fused_kernel_is_deterministic_and_rows_do_not_depend_on_their_batch():
    """Same bits on every call, and a row's bits do not depend on how many rows share its
    batch or where it sits (no split over K, one summation order): batches are cut differently
    as work is spread over devices."""
    if not fused_applies(CUDA, torch.bfloat16, 2560, 10240):
        pytest.skip("this GPU has no configuration for the fused kernel")
    x, w, b = _inputs(4099, 2560, 10240, seed=1)
    first = linear_gelu.linear_gelu(x, w, b)
    assert torch.equal(first, linear_gelu.linear_gelu(x, w, b))
    assert torch.equal(first[1000:1777], linear_gelu.linear_gelu(x[1000:1777].clone(), w, b))
    assert torch.equal(first[-5:], linear_gelu.linear_gelu(x[-5:].clone(), w, b))


@pytest.mark.gpu
def test_gpu_placed_esm_runs_fc1_fused_and_matches_fp32():
    """Placed as the pipeline places it (bf16, compiled beside the copy), a model of ESM-2 3B's
    width runs the fused kernel and agrees with the fp32 eager model per protein."""
    from test_fast_path import random_proteins

    from virnucpro.models.esm2 import ESM2
    from virnucpro.models.protein_alphabet import encode_proteins
    from virnucpro.predict.compile import uncompile_packed_layers
    from virnucpro.predict.packing import pack_proteins
    from virnucpro.predict.placement import EsmOnDevice, _compile_and_warm_up_esm

    torch.manual_seed(0)
    reference = ESM2(num_layers=2, embed_dim=2560, attention_heads=40).cuda().eval()
    placed = EsmOnDevice(reference.architecture, CUDA, torch.bfloat16, beside=_compile_and_warm_up_esm)
    placed.fill(reference)
    esm = placed.module
    if not fused_applies(CUDA, torch.bfloat16, 2560, 10240):
        pytest.skip("this GPU has no configuration for the fused kernel")
    assert all(layer.fused_fc1_gelu for layer in esm.layers)
    batch = pack_proteins(*encode_proteins(random_proteins(20, seed=12, longest=200))).to(CUDA)
    with torch.inference_mode():
        got = esm.pooled_packed(batch)
        expected = reference.pooled_packed(batch)
    cos = F.cosine_similarity(got.double(), expected.double(), dim=1)
    assert cos.min() > 0.9999
    uncompile_packed_layers(esm)
