"""--precision fp8: ESM-2's linear layers as fp8 (e4m3) matrix products, through PyTorch's
scaled matrix product (torch._scaled_mm, cuBLAS/CUTLASS on Hopper and later).

Scaling is row-wise on both sides: one scale per output channel of each weight (computed once,
when the weights are copied to the device) and one per token of each activation (computed as
the activations are made, which torch.compile fuses into the LayerNorm / GELU kernel that
produces them, so quantising costs no separate pass). Products accumulate in fp32 and come out
in bf16, with the bias added in the same call. Everything around the linear layers (norms,
rotary, attention, GELU, residual adds) stays in bf16; DNABERT-S and the classifier keep their
precision.

Layers listed in `keep` stay in bf16: trained protein language models have a few activation
channels far larger than the rest, and a row-wise scale set by them leaves little resolution
for the others; keeping the layers that read such activations in bf16 is the usual cure.
benchmarks/bench_fp8.py measures speed and fidelity of each choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import InputError

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) have fp8 tensor cores
# Rows of an fp8 product in multiples of this: a batch of packed tokens is padded to one
# (a copy per linear layer). Some PyTorch/cuBLAS versions refuse other row counts; set to 1
# by check_fp8_device where the device's library takes any (torch 2.11 on an H200 does).
ROW_MULTIPLE = 16
# Accumulate in the tensor cores' fast fp8 mode rather than promoting to fp32 every few
# steps: on one H200 (benchmarks/RESULTS.md, 20k frames) 1.09x the ESM-2 tokens/s of the
# promoted mode, with the same fidelity to fp32 to four digits (the error is the e4m3
# rounding of the inputs, not the accumulation).
FAST_ACCUM = True


class Fp8Linear(nn.Module):
    """y = x W^T + b with W and x in fp8, each scaled per row; y in bf16."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_fp8", torch.empty(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("weight_scale", torch.empty(1, out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=torch.bfloat16, device=device))

    @torch.no_grad()
    def load(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Quantise a linear layer's weight [out, in] (any float dtype, on this device)."""
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX  # [out]
        self.weight_fp8.copy_((w / scale[:, None]).to(FP8))
        self.weight_scale.copy_(scale[None, :])
        self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:  # [..., in] -> [M, in] and back
            return self.forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)
        rows = x.shape[0]  # packed tokens
        pad = (-rows) % ROW_MULTIPLE
        x32 = x.float()
        scale = x32.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [M, 1]
        x_fp8 = (x32 / scale).to(FP8)
        if pad:
            x_fp8 = F.pad(x_fp8.view(torch.uint8), (0, 0, 0, pad)).view(FP8)
            scale = F.pad(scale, (0, 0, 0, pad), value=1.0)
        y = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             bias=self.bias, out_dtype=torch.bfloat16, use_fast_accum=FAST_ACCUM)  # [M(+pad), out]
        return y[:rows] if pad else y


def fp8_linears(esm: nn.Module, keep: tuple[str, ...] = ()) -> list[tuple[str, nn.Linear, Fp8Linear]]:
    """Swap every ESM-2 layer's linear layers (but those named in `keep`) for empty Fp8Linear
    modules on the same device; returns (parameter prefix, old linear, new module), so the
    caller can load each one's weights."""
    swapped = []
    for index, layer in enumerate(esm.layers):
        for owner, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "out_proj"), (layer, "fc1"), (layer, "fc2")):
            if name in keep:
                continue
            old: nn.Linear = getattr(owner, name)
            new = Fp8Linear(old.in_features, old.out_features, device=old.weight.device)
            setattr(owner, name, new)
            prefix = f"layers.{index}.{'self_attn.' if owner is layer.self_attn else ''}{name}"
            swapped.append((prefix, old, new))
    return swapped


def require_gpu(device: torch.device) -> None:
    """An InputError unless `device` is a GPU (asks nothing of the GPU: the parent process,
    which never touches one, resolves the precision with this)."""
    if device.type != "cuda":
        raise InputError(f"--precision fp8 needs a GPU with fp8 support; {device} is not a GPU")


def check_fp8_device(device: torch.device) -> None:
    """An InputError unless `device` has fp8 tensor cores."""
    require_gpu(device)
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise InputError(
            f"--precision fp8 needs a GPU with fp8 tensor cores (compute capability 8.9 or later: "
            f"L4, L40, H100, H200, ...); {device} ({torch.cuda.get_device_name(device)}) has "
            f"{capability[0]}.{capability[1]}: use --precision bf16")
    global ROW_MULTIPLE
    ROW_MULTIPLE = 1 if _takes_any_row_count(device) else 16


def _takes_any_row_count(device: torch.device) -> bool:
    """Whether a row-scaled fp8 product of 37 rows, called as Fp8Linear calls it, runs on
    `device` (else rows are padded)."""
    a = torch.ones(37, 64, device=device).to(FP8)
    b = torch.ones(48, 64, device=device).to(FP8)
    try:
        torch._scaled_mm(a, b.t(), scale_a=torch.ones(37, 1, device=device),
                         scale_b=torch.ones(1, 48, device=device),
                         bias=torch.zeros(48, dtype=torch.bfloat16, device=device),
                         out_dtype=torch.bfloat16, use_fast_accum=FAST_ACCUM)
        torch.cuda.synchronize(device)
        return True
    except RuntimeError:
        return False
