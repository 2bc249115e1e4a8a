"""What `--precision` means on one device, decided once.

ESM-2 is ~97 % of the work: it computes in the chosen dtype. DNABERT-S (~3 %) keeps fp32
weights; on a GPU's fast path its matrix products run in fp16 under autocast whatever
--precision says (as fast as bf16, and far closer to fp32: benchmarks/RESULTS.md), with a
shard redone in fp32 if fp16 overflows. Packed (padding-free) ESM-2 batches need the flash
varlen kernel: CUDA in bf16/fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from virnucpro.errors import InputError
from virnucpro.predict import fp8

_BY_NAME = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    esm_dtype: torch.dtype
    dnabert_autocast: bool  # DNABERT-S GEMMs in fp16 under autocast (weights stay fp32)
    packed: bool  # ESM-2 on packed batches through varlen attention (models/packed_attention.py)
    reference: bool  # the original algorithm: fp32, one-by-one DNABERT-S, 2048-token ESM batches
    fp8: bool = False  # ESM-2's linear layers in fp8 (predict/fp8.py), the rest in esm_dtype (bf16)

    @classmethod
    def resolve(cls, name: str, device: torch.device, reference: bool = False) -> "Precision":
        """fp32 for the reference path and on CPUs by default; bf16 on GPUs by default."""
        if name == "fp8" and not reference:
            fp8.require_gpu(device)
            return cls(torch.bfloat16, dnabert_autocast=True, packed=True, reference=False, fp8=True)
        if reference:
            dtype = torch.float32
        elif name == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = _BY_NAME[name]
        fast_gpu = device.type == "cuda" and dtype != torch.float32 and not reference
        return cls(dtype, dnabert_autocast=fast_gpu, packed=fast_gpu, reference=reference)

    @property
    def dnabert_dtype(self) -> torch.dtype:
        """DNABERT-S's weights: fp32 under autocast, else the run's dtype."""
        return torch.float32 if self.dnabert_autocast else self.esm_dtype

    @property
    def name(self) -> str:
        """ESM-2's precision as logs and fingerprints spell it: 'bfloat16', 'float32', ...,
        or 'fp8-fast-accum+bfloat16' (fp8 linear layers, the rest in bf16; the accumulation
        mode is named because it moves last digits, and a resume must not mix the two)."""
        dtype = str(self.esm_dtype).removeprefix("torch.")
        if not self.fp8:
            return dtype
        return f"fp8{'-fast-accum' if fp8.FAST_ACCUM else ''}+{dtype}"  # as set when asked


def check_one_device_kind(devices: list[torch.device], precision: str, reference: bool) -> None:
    """CPUs and GPUs compute differently (other kernels, and by default other precisions),
    so a run mixing them would give results that depend on which device ran each shard."""
    if len({d.type for d in devices}) > 1:
        shown = ", ".join(f"{d}: {Precision.resolve(precision, d, reference).name}" for d in devices)
        raise InputError(f"--devices mixes the CPU and GPUs ({shown}); their results differ in the "
                         "last digits, so they would depend on which device ran each shard: use "
                         "GPUs only, or the CPU only")
