"""ESM-2's fused GPU kernel: rotation + attention of the packed path (models/rotary_attention.py).
Where it applies; that a layer computes the same function through it (its CPU implementation
is the unfused arithmetic); the Triton kernel's tiling and edges in Triton's CPU interpreter
where Triton is installed; and, on the GPU, that it matches fp32 as closely as the unfused
path, is deterministic, and gives a protein the same bits whatever else is in its batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from virnucpro.models import demo, rotary_attention
from virnucpro.models.esm2 import RotaryEmbedding, SelfAttention, TransformerLayer, _apply_rotary
from virnucpro.models.packed_attention import packed_attention
from virnucpro.predict import placement
from virnucpro.predict.placement import FUSED_KERNELS, fused_kernels

CUDA = torch.device("cuda", 0)


def test_fused_kernels_apply_to_half_precision_on_measured_gpus_unless_turned_off(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("VIRNUCPRO_FUSED_KERNELS", raising=False)
    assert fused_kernels(CUDA, torch.bfloat16) == FUSED_KERNELS == ("rotary_attention", "gelu_in_gemm", "residual_in_gemm")
    # fp16 keeps the erf GELU kernel (finer rounding: the tanh form would be the coarser)
    assert fused_kernels(CUDA, torch.float16) == ("rotary_attention", "gelu", "residual_in_gemm")
    assert fused_kernels(torch.device("cpu"), torch.bfloat16) == ()
    assert fused_kernels(CUDA, torch.float32) == ()  # the fp32 reference path
    for value, expected in [("0", ()), ("1", FUSED_KERNELS), ("", ()),
                            (" rotary_attention ", ("rotary_attention",)),
                            ("1,gelu", ("rotary_attention", "residual_in_gemm", "gelu")),  # gelu in place of gelu_in_gemm
                            ("gelu,gelu", ("gelu",)),
                            ("rotary_attention,gelu,residual_in_gemm", ("rotary_attention", "gelu", "residual_in_gemm"))]:
        monkeypatch.setenv("VIRNUCPRO_FUSED_KERNELS", value)  # the user's switch
        assert fused_kernels(CUDA, torch.bfloat16) == expected, value
    monkeypatch.setenv("VIRNUCPRO_FUSED_KERNELS", "1,gelu_in_gemm")  # fp16 with the epilogue, asked for
    assert fused_kernels(CUDA, torch.float16) == ("rotary_attention", "residual_in_gemm", "gelu_in_gemm")
    monkeypatch.setenv("VIRNUCPRO_FUSED_KERNELS", "rotary_attention,gelu,gelu_in_gemm")
    with pytest.raises(ValueError, match="name one"):
        fused_kernels(CUDA, torch.bfloat16)
    monkeypatch.setenv("VIRNUCPRO_FUSED_KERNELS", "rotary_attention,flash")
    with pytest.raises(ValueError, match="unknown kernel.*flash"):
        fused_kernels(CUDA, torch.bfloat16)
    monkeypatch.delenv("VIRNUCPRO_FUSED_KERNELS")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert fused_kernels(CUDA, torch.bfloat16) == ()  # no measured configuration


def test_placing_esm_turns_the_fused_kernels_on_where_they_apply(monkeypatch):
    def flags(module):  # (rotary attention, fc1 and GELU as one GEMM, the GELU kernel) of each layer
        return [(layer.self_attn.fused_rotary_attention, layer.gelu_in_gemm, layer.fused_gelu)
                for layer in module.layers]

    def residual_in_gemm(module):
        return module.residual_in_gemm

    arch = dict(num_layers=2, embed_dim=128, attention_heads=4)  # heads of 32
    cpu = torch.device("cpu")
    assert flags(placement.EsmOnDevice(arch, cpu, torch.float32).module) == [(False, False, False)] * 2
    assert not residual_in_gemm(placement.EsmOnDevice(arch, cpu, torch.float32).module)
    monkeypatch.setattr(placement, "fused_kernels", lambda *args: FUSED_KERNELS)
    assert flags(placement.EsmOnDevice(arch, cpu, torch.float32).module) == [(True, True, False)] * 2
    assert residual_in_gemm(placement.EsmOnDevice(arch, cpu, torch.float32).module)
    # heads of 16 (the demo model's): too narrow for the attention kernel's products; the GELU
    # takes any width
    assert flags(placement.EsmOnDevice(demo.demo_esm().architecture, cpu, torch.float32).module) == [(False, True, False)] * 2
    # heads of 24 (ESM-2 35M's): not a power of two
    assert flags(placement.EsmOnDevice(dict(num_layers=1, embed_dim=480, attention_heads=20), cpu,
                                       torch.float32).module) == [(False, True, False)]
    # fp8 runs its own layers: left as they are
    assert flags(placement.EsmOnDevice(arch, cpu, torch.float32, fp8_keep=()).module) == [(False, False, False)] * 2
    assert not residual_in_gemm(placement.EsmOnDevice(arch, cpu, torch.float32, fp8_keep=()).module)
    monkeypatch.setattr(placement, "fused_kernels", lambda *args: ("gelu",))  # the user's choice
    assert flags(placement.EsmOnDevice(arch, cpu, torch.float32).module) == [(False, False, True)] * 2
    assert not residual_in_gemm(placement.EsmOnDevice(arch, cpu, torch.float32).module)


def _packed_inputs(lengths, embed_dim=128, heads=4, seed=0):
    from virnucpro.models.protein_alphabet import encode_proteins
    from virnucpro.predict.packing import pack_proteins

    rng = np.random.default_rng(seed)
    proteins = ["".join(rng.choice(list("LAGVSERTIDPKQNFYMHWC"), n - 2)) for n in lengths]
    batch = pack_proteins(*encode_proteins(proteins))
    rotary = RotaryEmbedding(embed_dim // heads)
    x = torch.from_numpy(rng.standard_normal((batch.tokens.shape[0], embed_dim), dtype=np.float32))
    return batch, rotary.packed_cos_sin(batch), x


def test_attention_through_the_fused_rotary_attention_op_computes_the_same_function():
    """The op's CPU arithmetic is the model's own rotation and per-protein SDPA, so the output
    must not change by a bit with the flag on: this pins the wiring (what the op is handed,
    the shape handed to out_proj)."""
    torch.manual_seed(1)
    attention = SelfAttention(128, 4).eval()
    batch, cos_sin, x = _packed_inputs([5, 52, 3, 130, 64])
    with torch.no_grad():
        expected = attention.forward_packed(x, batch, cos_sin)
        attention.fused_rotary_attention = True
        got = attention.forward_packed(x, batch, cos_sin)
    assert torch.equal(got, expected)


def test_compiled_layer_calls_the_fused_op_as_one_node():
    """torch.compile sees the op through its fake implementation (shapes and dtypes only) and
    keeps it as one call in the layer's graph, with no rotation of its own."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch.manual_seed(0)
    layer = TransformerLayer(128, 4).eval()
    batch, cos_sin, x = _packed_inputs([7, 40, 19])
    with torch.no_grad():
        expected = layer.forward_packed(x, batch, cos_sin)
        layer.self_attn.fused_rotary_attention = True
        backend = EagerAndRecordGraphs()
        got = torch.compile(layer.forward_packed, backend=backend, dynamic=True)(x, batch, cos_sin)
    graph = str(backend.graphs[0].graph)
    assert "virnucpro.rotary_attention" in graph and "sin" not in graph.replace("sin_", "")
    assert torch.equal(got, expected)
    torch._dynamo.reset()


# Triton's interpreter casts scalars with int(array), which NumPy 2.5 refuses for a
# one-element array that is not 0-d; take the element instead (interpreter only).
_INTERPRETER_FIX = """
import triton.runtime.interpreter as interpreter
_patch = interpreter._patch_lang_tensor
def _fixed(tensor, scope):
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
interpreter._patch_lang_tensor = _fixed
"""


def _in_triton_interpreter(script: str) -> None:
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("Triton is not installed (CPU builds of torch do not bring it)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_FIX + textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_rotary_attention_kernel_in_triton_interpreter():
    """Proteins shorter than, equal to and longer than a block (several key blocks, several
    query blocks), and of one token, in fp16 through Triton's interpreter, against the
    rotation and SDPA in fp32 on the same inputs."""
    _in_triton_interpreter("""
        import numpy as np, torch, torch.nn.functional as F
        from virnucpro.models.rotary_attention_kernel import launch
        from virnucpro.models.esm2 import RotaryEmbedding, _apply_rotary
        torch.manual_seed(0)
        heads, hd = 3, 64
        lengths = [5, 52, 1, 130, 64, 65]
        cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
        qkv = torch.randn(int(cu[-1]), 3, heads, hd).half()
        positions = torch.cat([torch.arange(n) for n in lengths])
        cos, sin = RotaryEmbedding(hd).cos_sin(max(lengths), "cpu")
        cos, sin = cos[positions], sin[positions]
        q, k, v = qkv.float().unbind(1)
        q = _apply_rotary(q * 0.125, cos[:, None], sin[:, None])
        k = _apply_rotary(k, cos[:, None], sin[:, None])
        for block_m, block_n in [(64, 64), (32, 16)]:
            got = launch(qkv, cos, sin, cu, 0.125, block_m=block_m, block_n=block_n).float()
            for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
                ref = F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (q, k, v)),
                                                     scale=1.0).transpose(0, 1)
                assert (got[s:e] - ref).abs().max() < 4e-3, (block_m, block_n, s, e)
        print("ok")
    """)


def test_rotary_attention_kernel_keeps_sixteen_warps_an_sm_on_an_h200():
    """The op's launch compiled for sm_90 (Triton's own ptxas, no GPU needed) spills nothing and
    leaves room for 16 warps an SM: 4 programs of 4 warps at up to 128 registers a thread. A
    version at 132 registers (three programs an SM) ran ~20 % slower on an H200, and at 134
    before that (benchmarks/RESULTS.md, sixth and ninth sessions); nothing else would show it
    before a device run."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("Triton is not installed (CPU builds of torch do not bring it)")
    import importlib.util
    from pathlib import Path

    from virnucpro.models.rotary_attention_kernel import _rotary_attention_kernel

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_registers.py"
    spec = importlib.util.spec_from_file_location("kernel_registers", path)
    kernel_registers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_registers)
    launch = rotary_attention.LAUNCH
    used = kernel_registers.resources(_rotary_attention_kernel, **launch)
    per_warp = -(-used["registers"] // 8) * 8 * 32  # registers are handed out 8 a thread at a time
    programs = 65_536 // (per_warp * launch["num_warps"])
    assert used["stack_bytes"] == 0 and programs * launch["num_warps"] >= 16, (launch, used)


def _skip_unless_fused(name: str) -> None:
    if torch.cuda.get_device_capability(CUDA)[0] not in placement.FUSED_GENERATIONS:
        pytest.skip(f"this GPU runs no fused {name} kernel (not measured on its generation)")
    if name not in placement.FUSED_KERNELS + placement.OPTIONAL_KERNELS:
        raise ValueError(f"no fused kernel named {name}")


def _attention_inputs(lengths, seed, heads=40, hd=64):
    gen = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    qkv = torch.randn(int(cu[-1]), 3, heads, hd, generator=gen).to(torch.bfloat16)
    positions = torch.cat([torch.arange(n) for n in lengths])
    cos, sin = RotaryEmbedding(hd).cos_sin(max(lengths), "cpu")
    return qkv.to(CUDA), cos[positions].to(CUDA), sin[positions].to(CUDA), cu.to(CUDA)


@pytest.mark.gpu
def test_gpu_fused_rotary_attention_matches_fp32_as_closely_as_the_unfused_path():
    """Proteins of read and contig lengths, one token, and past two blocks, against the
    rotation and SDPA in fp32 on the same bf16 inputs, protein by protein. Both GPU paths round
    the rotated q and k and the softmax weights to bf16; the fused one must be within 3e-2 (a
    few bf16 ulps at |x| ~ 4, as for PyTorch's own kernels) and no worse than the unfused path
    (the model's rotation, then PyTorch's varlen kernel) by more than a quarter."""
    _skip_unless_fused("rotary_attention")
    lengths = [52, 3, 168, 17, 130, 52, 1, 64, 65, 200]
    qkv, cos, sin, cu = _attention_inputs(lengths, seed=3)
    scale = 64**-0.5
    got = rotary_attention.rotary_attention(qkv, cos, sin, cu, scale).float()
    q, k, v = qkv.unbind(1)
    q32 = _apply_rotary(q.float() * scale, cos[:, None], sin[:, None])
    k32 = _apply_rotary(k.float(), cos[:, None], sin[:, None])
    unfused = packed_attention(_apply_rotary(q * scale, cos[:, None], sin[:, None]),
                               _apply_rotary(k, cos[:, None], sin[:, None]), v, cu, max(lengths)).float()
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        ref = F.scaled_dot_product_attention(*(t[start:end].transpose(0, 1) for t in (q32, k32, v.float())),
                                             scale=1.0).transpose(0, 1)
        err = (got[start:end] - ref).abs().max()
        assert err < 3e-2, (start, end, float(err))
        assert err <= 1.25 * (unfused[start:end] - ref).abs().max() + 1e-3, (start, end)


@pytest.mark.gpu
def test_gpu_fused_rotary_attention_is_deterministic_and_proteins_do_not_depend_on_their_batch():
    _skip_unless_fused("rotary_attention")
    lengths = [52, 168, 17, 51, 130]
    qkv, cos, sin, cu = _attention_inputs(lengths, seed=4)
    first = rotary_attention.rotary_attention(qkv, cos, sin, cu, 0.125)
    assert torch.equal(first, rotary_attention.rotary_attention(qkv, cos, sin, cu, 0.125))
    # the 168-token protein, and a 52-token one (a grid of one query block when alone, of
    # three in this batch), each alone
    for start, end in ((int(cu[1]), int(cu[2])), (int(cu[0]), int(cu[1]))):
        alone = rotary_attention.rotary_attention(
            qkv[start:end].clone(), cos[start:end].clone(), sin[start:end].clone(),
            torch.tensor([0, end - start], dtype=torch.int32, device=CUDA), 0.125)
        assert torch.equal(first[start:end], alone), (start, end)


@pytest.mark.gpu
def test_gpu_placed_esm_runs_the_fused_kernel_and_matches_fp32(monkeypatch):
    """Placed as the pipeline places it (bf16, compiled beside the copy), a model of ESM-2 3B's
    width runs the fused kernel and agrees with the fp32 eager model per protein."""
    from test_fast_path import random_proteins

    from virnucpro.models.esm2 import ESM2
    from virnucpro.models.protein_alphabet import encode_proteins
    from virnucpro.predict.compile import uncompile_packed_layers
    from virnucpro.predict.packing import pack_proteins
    from virnucpro.predict.placement import EsmOnDevice, _compile_and_warm_up_esm

    _skip_unless_fused("rotary_attention")
    monkeypatch.delenv("VIRNUCPRO_FUSED_KERNELS", raising=False)  # the default set, whatever the shell says
    torch.manual_seed(0)
    reference = ESM2(num_layers=2, embed_dim=2560, attention_heads=40).cuda().eval()
    placed = EsmOnDevice(reference.architecture, CUDA, torch.bfloat16, beside=_compile_and_warm_up_esm)
    placed.fill(reference)
    esm = placed.module
    assert all(layer.self_attn.fused_rotary_attention and layer.gelu_in_gemm for layer in esm.layers)
    assert esm.residual_in_gemm  # its random biases are small beside its embeddings
    batch = pack_proteins(*encode_proteins(random_proteins(20, seed=12, longest=200))).to(CUDA)
    with torch.inference_mode():
        got = esm.pooled_packed(batch)
        expected = reference.pooled_packed(batch)
    cos = F.cosine_similarity(got.double(), expected.double(), dim=1)
    assert cos.min() > 0.9999
    uncompile_packed_layers(esm)
