"""Where one ESM-2 3B layer spends its time besides the GEMMs, and what each candidate change
buys: attention kernels on packed (varlen) proteins of real-read and real-contig lengths, and
layer variants compiled as the pipeline compiles them, each timed and compared with the fp32
layer on the same input.

    python benchmarks/esm_layer_kernels.py --out esm_layer_kernels.json

Attention (q, k, v [N, 40, 64] bf16, packed proteins, one row per kernel):
  flash_varlen      torch.nn.attention.varlen.varlen_attn
  efficient_varlen  the memory-efficient kernel's varlen entry (aten._efficient_attention_forward)
  cudnn_ragged      cuDNN with ragged offsets (aten._cudnn_attention_forward)
With --rotary-attention: rotation + attention from the qkv projection's output, unfused as
shipped before against the fused kernel (models/rotary_attention_kernel.py) per configuration.
Layer variants (one TransformerLayer, torch.compile dynamic + deterministic, bf16):
  base              TransformerLayer.forward_packed as shipped (attention routed by length)
  flash_attention   as before routing: flash varlen attention for every batch
  residual_in_gemm  out_proj and fc2 add the residual in the GEMM (addmm, C = residual + bias)
  tanh_gelu_epilogue fc1 through cuBLASLt's GELU epilogue (tanh approximation: not the
                    model's erf GELU; measured to see what an epilogue is worth)
  residual_in_gemm_tanh_gelu  both
  persistent_layer_norm  base, with Inductor allowed persistent (one-pass) reductions up to
                    4,096 columns: LayerNorm over 2,560 otherwise loops over the row twice
  tanh_gelu_pointwise  base with GELU's tanh form in the same pointwise kernel (diagnostic:
                    is the erf kernel bound by arithmetic or by memory?)
  two_layers        two layers compiled as one graph (time per layer): what fusing the
                    residual add across the layer boundary into the next LayerNorm buys
  two_layers_persistent  both
  aten_gelu         base with GELU as PyTorch's own kernel (an opaque custom op, so Inductor
                    does not generate its own pointwise kernel for it)
  fused_fc1_gelu    persistent_layer_norm with fc1 and its GELU as one Triton kernel
                    (benchmarks/fused_gemm_kernel.py, an experiment: not shipped)
  fused_rotary_attention  persistent_layer_norm with the rotation and attention as one Triton
                    kernel (models/rotary_attention.py)
  fused_rotary_attention_gelu  fused_rotary_attention with the GELU through erfc
                    (models/gelu.py): the layer as the pipeline runs it on an H200
  fused_both        fused_rotary_attention and fused_fc1_gelu (the experiment)
  deferred_residual fused_rotary_attention with the residual add that ends the layer left to
                    the next layer's first LayerNorm (takes and returns x and a pending term)
  deferred_add_layer_norm  fused_rotary_attention_gelu with that add and the first
                    LayerNorm as one hand-written kernel (benchmarks/add_layer_norm_kernel.py)
  accumulate_packed TransformerLayer.accumulate_packed as shipped in bf16, every fused kernel
                    of its default set on (rotary attention, the GELU in fc1's epilogue,
                    residual in the GEMMs, models/layer_norm.py's LayerNorm kernel)
  inplace_residual  fused_rotary_attention_gelu with out_proj and fc2 accumulating into the
                    residual stream in place (x.addmm_(h, W^T): cuBLAS's beta = 1, no add
                    kernel, no copy) and their biases deferred: the stream is held without
                    them, and each LayerNorm adds the biases so far (an fp32 [D] vector);
                    accumulate_packed with its LayerNorms compiled by Inductor
Each: ms per call (CUDA events, median of 20), the share of the bf16 matrix rate measured in
the same run (GEMM + attention FLOPs), the cosine / max relative error against the fp32
eager layer, and its CUDA kernels by time (torch.profiler, one call).
    python benchmarks/esm_layer_kernels.py --out F.json --variants base,persistent_layer_norm
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402

from virnucpro.models import esm2  # noqa: E402
from virnucpro.models.esm2 import PackedBatch, TransformerLayer  # noqa: E402
from virnucpro.predict.compile import compile_options  # noqa: E402
from virnucpro.predict.packing import pack_proteins  # noqa: E402

D, H, HD = 2560, 40, 64


def lengths_for(kind: str, budget: int, rng: np.random.Generator) -> list[int]:
    """Protein token counts (<cls> + residues + <eos>) as real frames have them: 150 bp reads
    give 48-51 residues; 500 bp contig chunks 166, with shorter tail chunks."""
    out: list[int] = []
    while sum(out) < budget:
        if kind == "reads":
            out.append(int(rng.integers(48, 52)) + 2)
        else:
            out.append(168 if rng.random() < 0.85 else int(rng.integers(20, 167)) + 2)
    return out[:-1]


def packed(lengths: list[int]) -> PackedBatch:
    """Random residue tokens of these lengths, packed as the pipeline packs them, on the GPU."""
    tokens = torch.randint(4, 24, (len(lengths), max(lengths)))
    return pack_proteins(tokens, torch.tensor(lengths)).to(torch.device("cuda"))


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


# (BLOCK_M, BLOCK_N, warps, stages) of the fused rotary attention kernel, swept
ROTARY_ATTENTION_SWEEP = [(64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 2, 1), (32, 64, 2, 1), (64, 32, 4, 1),
                          (128, 64, 8, 1), (128, 64, 4, 1), (64, 128, 4, 1), (128, 128, 8, 1), (32, 32, 2, 1),
                          (64, 64, 8, 1), (128, 64, 8, 2)]


def rotary_attention_rows(batch: PackedBatch, lengths: list[int]) -> dict:
    """Rotation + attention from the qkv projection's output: the shipped unfused path (the
    rotation compiled as the layer compiles it, then PyTorch's kernel chosen by length)
    against the fused kernel (models/rotary_attention_kernel.py) per launch configuration,
    and the op as shipped (its one configuration). Error against fp32 on the same input."""
    from virnucpro.models import rotary_attention_kernel
    from virnucpro.models.rotary_attention import rotary_attention

    n = batch.tokens.shape[0]
    qkv = torch.randn(n, 3, H, HD, device="cuda", dtype=torch.bfloat16)
    cos, sin = rotary_for(batch)
    cu, scale = batch.cu_seqlens, HD**-0.5
    flops = sum(4 * L * L * D for L in lengths)

    def rotate(qkv):
        q, k, v = qkv.unbind(1)
        return (esm2._apply_rotary(q * scale, cos[:, None], sin[:, None]),
                esm2._apply_rotary(k, cos[:, None], sin[:, None]), v)
    rotate_compiled = torch.compile(rotate, dynamic=True, options=compile_options())
    q32, k32, v32 = (x.float() for x in rotate(qkv.float()))
    ref = esm2.attention_one_by_one(q32, k32, v32, batch.cu_seqlens_host)
    kernels = {"unfused_shipped": lambda: esm2._varlen_attention(*rotate_compiled(qkv), batch),
               "fused_op": lambda: rotary_attention(qkv, cos, sin, cu, scale)}
    for bm, bn, warps, stages in ROTARY_ATTENTION_SWEEP:
        kernels[f"fused_{bm}x{bn}_w{warps}_s{stages}"] = (
            lambda bm=bm, bn=bn, warps=warps, stages=stages: rotary_attention_kernel.launch(
                qkv, cos, sin, cu, scale, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages))
    rows = {}
    for name, fn in kernels.items():
        try:
            out = fn()
            torch.cuda.synchronize()
            ms = time_ms(fn)
            rows[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                          "max_abs_err_vs_fp32": round(float((out.float() - ref).abs().max()), 5)}
        except Exception as exc:  # noqa: BLE001 - a configuration that does not fit is a result too
            rows[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
        print(name, rows[name], flush=True)
    return rows


def attention_rows(batch: PackedBatch, lengths: list[int]) -> dict:
    from torch.nn.attention.varlen import varlen_attn

    n = batch.tokens.shape[0]
    q, k, v = (torch.randn(n, H, HD, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu, t = batch.cu_seqlens, batch.max_len
    flops = sum(4 * L * L * D for L in lengths)
    kernels = {
        "flash_varlen": lambda: varlen_attn(q, k, v, cu, cu, t, t, scale=1.0),
        "efficient_varlen": lambda: torch.ops.aten._efficient_attention_forward(
            q[None], k[None], v[None], None, cu, cu, t, t, 0.0, 0, False, scale=1.0)[0][0],
        "cudnn_ragged": lambda: torch.ops.aten._cudnn_attention_forward(
            q, k, v, None, cu, cu, t, t, False, scale=1.0)[0],
    }
    # fp32 reference, protein by protein
    ref = torch.empty(n, H, HD, device="cuda", dtype=torch.float32)
    for s, e in zip(batch.cu_seqlens_host[:-1], batch.cu_seqlens_host[1:]):
        seg = [x[s:e].float().transpose(0, 1) for x in (q, k, v)]
        ref[s:e] = F.scaled_dot_product_attention(*seg, scale=1.0).transpose(0, 1)
    rows = {}
    for name, fn in kernels.items():
        try:
            out = fn()
            torch.cuda.synchronize()
            err = float(((out.float() - ref).abs().max()))
            ms = time_ms(fn)
            rows[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                          "max_abs_err_vs_fp32": round(err, 5), "shape_ok": tuple(out.shape) == (n, H, HD)}
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks is a result too
            rows[name] = {"unavailable": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return rows


def layer_rows(batch: PackedBatch, rate: float, lengths: list[int], names: list[str]) -> dict:
    torch.manual_seed(0)
    ref_layer = bench_engine.randomise(TransformerLayer(D, H).cuda(), 3).eval()
    with torch.no_grad():
        for p in ref_layer.parameters():
            p.copy_(p.half().float())
    n = batch.tokens.shape[0]
    x = torch.randn(n, D, device="cuda")
    cos_sin = rotary_for(batch)
    with torch.inference_mode():
        ref = ref_layer.forward_packed(x, batch, cos_sin).double()
    flops = n * 24 * D * D + sum(4 * L * L * D for L in lengths)
    rows = {}
    for name in names:
        variant, layers_per_call, context = LAYER_VARIANTS[name]
        layer = copy.deepcopy(ref_layer).to(torch.bfloat16)
        t0 = time.perf_counter()
        forward = variant(layer)
        fn = torch.compile(forward, dynamic=True, options=compile_options())
        xb = x.to(torch.bfloat16)
        # a layer that takes its input as two terms (x + pending) and returns its output so:
        # called with pending = 0, its two outputs summed are the layer's output
        # one that holds its biases apart (x updated in place): called with bias = 0, x + its
        # returned bias is the layer's output
        if getattr(forward, "deferred", False):
            inputs = (xb, torch.zeros_like(xb), batch, cos_sin)
        elif getattr(forward, "bias_deferred", False):
            inputs = (xb.clone(), torch.zeros(D, device="cuda"), batch, cos_sin)
        else:
            inputs = (xb, batch, cos_sin)
        with torch.inference_mode():
            with context():  # Inductor's choices apply while it compiles: the first call
                out = fn(*inputs)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            if isinstance(out, tuple):
                out = out[0] + out[1]  # before the timing calls: x may be updated in place
            ms = time_ms(lambda: fn(*inputs)) / layers_per_call
            kernels = kernel_times(lambda: fn(*inputs), layers_per_call)
        row = {"ms": round(ms, 3), "share_of_matrix_rate": round(flops / ms / 1e9 / rate, 3),
               "compile_s": round(compile_s, 1), "kernels_ms_per_layer": kernels}
        if layers_per_call == 1:  # two layers in a row are not comparable with one fp32 layer
            cos = F.cosine_similarity(out.double(), ref, dim=1)
            rel = (out.double() - ref).norm(dim=1) / ref.norm(dim=1)
            row.update({"cosine_min": float(cos.min()), "cosine_median": float(cos.median()),
                        "rel_err_max": float(rel.max())})
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        torch._dynamo.reset()
    return rows


def kernel_times(fn, layers_per_call: int) -> dict:
    """CUDA time of each kernel of one call, ms per layer, longest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name[:80]] = kernels.get(event.name[:80], 0.0) + event.device_time_total / 1e3
    return {k: round(v / layers_per_call, 4) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])}


def persistent_reductions():
    """Inductor allowed one-pass (persistent) reductions over rows of up to 4,096 elements,
    instead of its default 1,024 (as the pipeline now compiles); a context for the compiling
    (first) call."""
    from torch._inductor.virtualized import V

    from virnucpro.predict.compile import whole_row_choices

    return V.set_choices_handler(whole_row_choices())


def default_choices():
    """Inductor's own choices (before this pipeline's whole-row LayerNorm)."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.virtualized import V

    return V.set_choices_handler(InductorChoices())


def flash_attention(layer: TransformerLayer):
    """The layer as it was before attention was routed: flash varlen for every batch."""
    from torch.nn.attention.varlen import varlen_attn

    def attention(q, k, v, batch):
        return varlen_attn(q, k, v, batch.cu_seqlens, batch.cu_seqlens, batch.max_len, batch.max_len, scale=1.0)
    return packed_forward(layer, attention=attention)


def packed_forward(layer: TransformerLayer, *, attention=None, residual_in_gemm: bool = False,
                   tanh_gelu: bool = False):
    """TransformerLayer.forward_packed written out, with the candidate changes as switches:
    residual_in_gemm: out_proj and fc2 add the residual stream in the GEMM's epilogue
    (addmm with C = residual + bias) instead of a separate add; tanh_gelu: fc1 and GELU as one
    cuBLASLt call with the GELU epilogue (tanh approximation)."""
    attn = layer.self_attn
    attention = attention or esm2._varlen_attention

    def linear_plus(residual, inputs, linear):
        if residual_in_gemm:
            return torch.addmm(residual + linear.bias, inputs, linear.weight.t())
        return residual + linear(inputs)

    def forward(x, batch, cos_sin):
        h = layer.self_attn_layer_norm(x)
        tokens, dim = h.shape
        cos, sin = cos_sin
        q, k, v = attn.qkv_proj(h).view(tokens, 3, attn.num_heads, attn.head_dim).unbind(1)
        q = esm2._apply_rotary(q * attn.scaling, cos[:, None, :], sin[:, None, :])
        k = esm2._apply_rotary(k, cos[:, None, :], sin[:, None, :])
        x = linear_plus(x, attention(q, k, v, batch).reshape(tokens, dim), attn.out_proj)
        h = layer.final_layer_norm(x)
        if tanh_gelu:
            g = torch._addmm_activation(layer.fc1.bias, h, layer.fc1.weight.t(), use_gelu=True)
        else:
            g = F.gelu(layer.fc1(h), approximate="none")
        return linear_plus(x, g, layer.fc2)
    return forward


def tanh_gelu_pointwise(layer: TransformerLayer):
    def forward(x, batch, cos_sin):
        attn_out = layer.self_attn.forward_packed(layer.self_attn_layer_norm(x), batch, cos_sin)
        x = x + attn_out
        h = F.gelu(layer.fc1(layer.final_layer_norm(x)), approximate="tanh")
        return x + layer.fc2(h)
    return forward


@torch.library.custom_op("virnucpro_bench::gelu", mutates_args=())
def aten_gelu_op(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


@aten_gelu_op.register_fake
def _(x):
    return torch.empty_like(x)


def aten_gelu(layer: TransformerLayer):
    def forward(x, batch, cos_sin):
        x = x + layer.self_attn.forward_packed(layer.self_attn_layer_norm(x), batch, cos_sin)
        return x + layer.fc2(aten_gelu_op(layer.fc1(layer.final_layer_norm(x))))
    return forward


# The experimental fused fc1 + GELU (persistent 128x256x64 tiles, the fastest of
# linear_gelu_kernels.py's sweep on an H200), as an op the compiled layer calls.
FC1_GELU_CONFIG = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, persistent=True)


@torch.library.custom_op("virnucpro_bench::linear_gelu", mutates_args=())
def linear_gelu_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import fused_gemm_kernel

    return fused_gemm_kernel.launch(x, w, b, config=FC1_GELU_CONFIG)


@linear_gelu_op.register_fake
def _(x, w, b):
    return x.new_empty(x.shape[0], w.shape[0])


def fused(*kernels: str):
    """The layer with these fused kernels: "rotary_attention" and "gelu" (shipped, as
    placement turns them on), "fc1_gelu" (the experiment above)."""
    def variant(layer: TransformerLayer):
        layer.self_attn.fused_rotary_attention = "rotary_attention" in kernels
        layer.fused_gelu = "gelu" in kernels
        if "fc1_gelu" not in kernels:
            return layer.forward_packed

        def forward(x, batch, cos_sin):
            x = x + layer.self_attn.forward_packed(layer.self_attn_layer_norm(x), batch, cos_sin)
            hidden = linear_gelu_op(layer.final_layer_norm(x), layer.fc1.weight, layer.fc1.bias)
            return x + layer.fc2(hidden)
        return forward
    return variant


def deferred_residual(layer: TransformerLayer):
    """The layer with the fused rotary attention and its last residual add left to the next
    layer: it takes (x, pending) and returns (x', pending'), so the add x + pending fuses into
    its first LayerNorm and the standalone add kernel at its end goes (one graph per layer,
    as the pipeline compiles)."""
    layer.self_attn.fused_rotary_attention = True

    def forward(x, pending, batch, cos_sin):
        x = x + pending
        x = x + layer.self_attn.forward_packed(layer.self_attn_layer_norm(x), batch, cos_sin)
        return x, layer._feed_forward(x)
    forward.deferred = True
    return forward


def deferred_add_layer_norm(layer: TransformerLayer):
    """deferred_residual with both shipped kernels (rotary attention, erfc GELU), the add and
    the first LayerNorm as one hand-written kernel (benchmarks/add_layer_norm_kernel.py, an
    experiment): it reads x and pending, writes x + pending and its LayerNorm."""
    from add_layer_norm_kernel import add_layer_norm

    layer.self_attn.fused_rotary_attention = True
    layer.fused_gelu = True
    norm = layer.self_attn_layer_norm

    def forward(x, pending, batch, cos_sin):
        x, h = add_layer_norm(x, pending, norm.weight, norm.bias, norm.eps)
        x = x + layer.self_attn.forward_packed(h, batch, cos_sin)
        return x, layer._feed_forward(x)
    forward.deferred = True
    return forward


def inplace_residual(layer: TransformerLayer):
    """TransformerLayer.accumulate_packed (rotary attention, erfc GELU, the residual in the
    GEMMs) with its LayerNorms as PyTorch's fp32 arithmetic, which Inductor compiles (as
    first measured, before models/layer_norm.py's kernel): it takes (x, bias) with x + bias
    the stream (bias fp32 [D]) and returns the same pair; x is updated in place."""
    from virnucpro.models.layer_norm import layer_norm_plus_formula
    from virnucpro.models.residual_gemm import accumulate_matmul

    layer.self_attn.fused_rotary_attention = True
    layer.fused_gelu = True
    attn = layer.self_attn

    def norm(ln, x, bias):
        return layer_norm_plus_formula(x, bias, ln.weight, ln.bias, ln.eps)

    def forward(x, bias, batch, cos_sin):
        accumulate_matmul(x, attn.attend_packed(norm(layer.self_attn_layer_norm, x, bias), batch, cos_sin),
                          attn.out_proj.weight)
        bias = bias + attn.out_proj.bias.float()
        accumulate_matmul(x, layer._hidden(norm(layer.final_layer_norm, x, bias)), layer.fc2.weight)
        return x, bias + layer.fc2.bias.float()
    forward.bias_deferred = True
    return forward


def accumulate_packed(layer: TransformerLayer):
    """The shipped layer on the residual-in-GEMM path, every fused kernel of the bf16 default
    set on (fc1's GELU in its GEMM's epilogue since the eleventh session of issue 15)."""
    layer.self_attn.fused_rotary_attention = True
    layer.gelu_in_gemm = True
    def forward(x, bias, batch, cos_sin):
        return layer.accumulate_packed(x, bias, batch, cos_sin)
    forward.bias_deferred = True  # takes and returns (x, bias), as inplace_residual does
    return forward


def two_layers(layer: TransformerLayer):
    """The same layer twice in one graph: the add that ends the first fuses into the second's
    LayerNorm, as it would if the compiled unit spanned layer boundaries."""
    def forward(x, batch, cos_sin):
        return layer.forward_packed(layer.forward_packed(x, batch, cos_sin), batch, cos_sin)
    return forward


def nothing():
    return contextlib.nullcontext()


# name: (the function to compile, layers it runs, context while it compiles)
LAYER_VARIANTS = {
    "base": (lambda layer: layer.forward_packed, 1, default_choices),
    "flash_attention": (flash_attention, 1, default_choices),
    "residual_in_gemm": (lambda layer: packed_forward(layer, residual_in_gemm=True), 1, nothing),
    "tanh_gelu_epilogue": (lambda layer: packed_forward(layer, tanh_gelu=True), 1, nothing),
    "residual_in_gemm_tanh_gelu": (lambda layer: packed_forward(layer, residual_in_gemm=True, tanh_gelu=True),
                                   1, nothing),
    "persistent_layer_norm": (lambda layer: layer.forward_packed, 1, persistent_reductions),
    "tanh_gelu_pointwise": (tanh_gelu_pointwise, 1, default_choices),
    "two_layers": (two_layers, 2, default_choices),
    "two_layers_persistent": (two_layers, 2, persistent_reductions),
    "aten_gelu": (aten_gelu, 1, persistent_reductions),
    "fused_fc1_gelu": (fused("fc1_gelu"), 1, persistent_reductions),
    "fused_rotary_attention": (fused("rotary_attention"), 1, persistent_reductions),
    "fused_rotary_attention_gelu": (fused("rotary_attention", "gelu"), 1, persistent_reductions),
    "fused_both": (fused("fc1_gelu", "rotary_attention"), 1, persistent_reductions),
    "deferred_residual": (deferred_residual, 1, persistent_reductions),
    "deferred_add_layer_norm": (deferred_add_layer_norm, 1, persistent_reductions),
    "inplace_residual": (inplace_residual, 1, persistent_reductions),
    "accumulate_packed": (accumulate_packed, 1, persistent_reductions),
}


def rotary_for(batch: PackedBatch):
    from virnucpro.models.esm2 import RotaryEmbedding

    return RotaryEmbedding(HD).cuda().packed_cos_sin(batch)


def start_record() -> tuple[float, dict]:
    """TF32 off, the bf16 matrix-rate probe, and a result record naming the run: the rate and
    the record."""
    torch.backends.cuda.matmul.allow_tf32 = False
    rate = bench_engine.matmul_rate()
    return rate, {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
                  "bf16_matrix_rate_tflops": round(rate, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=98_304, help="packed tokens per batch")
    ap.add_argument("--variants", default=",".join(LAYER_VARIANTS), help="layer variants, comma-separated")
    ap.add_argument("--skip-attention", action="store_true", help="only the layer variants")
    ap.add_argument("--rotary-attention", action="store_true",
                    help="also the fused rotary attention kernel's configurations against the unfused path")
    args = ap.parse_args()
    rate, result = start_record()
    rng = np.random.default_rng(0)
    for kind in ("reads", "contigs"):
        lengths = lengths_for(kind, args.tokens, rng)
        batch = packed(lengths)
        result[kind] = {"tokens": int(sum(lengths)), "proteins": len(lengths),
                        "attention": {} if args.skip_attention else attention_rows(batch, lengths),
                        "rotary_attention": rotary_attention_rows(batch, lengths) if args.rotary_attention else {},
                        "layer": layer_rows(batch, rate, lengths, [v for v in args.variants.split(",") if v])}
        print(json.dumps(result[kind], indent=1), flush=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
