"""torch.compile for ESM-2's packed layers, and the warm-up that compiles every kernel
before real work arrives.

Compiled in Inductor's deterministic mode: otherwise each worker process times candidate
reduction kernels (LayerNorm's block size and warps) on its own GPU and keeps the fastest,
and those candidates sum in different orders, so results would depend on the device count
(benchmarks/RESULTS.md, "Deterministic compilation").
"""

from __future__ import annotations

import logging

import torch

from virnucpro.stages.types import Frame

log = logging.getLogger("virnucpro")


def compile_packed_layers(esm: torch.nn.Module) -> None:
    """torch.compile each ESM-2 layer's packed forward (fuses LayerNorm, rotary, GELU and
    residual adds around the GEMMs). Token counts vary per batch: dynamic shapes, so one
    compilation serves every batch; the layers share code, so they share the compiled graph."""
    import torch._dynamo.config

    # Python floats (the attention scaling, LayerNorm's eps) as constants, as eager code sees
    # them. Traced as symbols, the default, Dynamo finds it cannot keep them symbolic and
    # traces the layer a second time: about half of a warm-cache compile (measured on the CPU:
    # 4.5 s -> 2.0 s for the first call). Results do not change: the values are the same.
    # A process-wide setting (Dynamo reads it when it traces, lazily, on the warm-up thread):
    # it applies to any other torch.compile in the process too, and is left set.
    torch._dynamo.config.specialize_float = True
    options = compile_options()
    for layer in esm.layers:
        layer.forward_packed = torch.compile(layer.forward_packed, dynamic=True, options=options)


def compile_options() -> dict:
    """Inductor's default options, made deterministic where this PyTorch has the switch
    (older ones get a warning)."""
    import torch._inductor.config

    if hasattr(torch._inductor.config, "deterministic"):
        return {"deterministic": True}
    log.warning("this PyTorch (%s) has no deterministic mode for torch.compile: results may "
                "differ in the last bits between devices; --no-compile avoids that", torch.__version__)
    return {}


def uncompile_packed_layers(esm: torch.nn.Module) -> None:
    """Drop the compiled wrappers: the class's own (eager) method shows through again."""
    for layer in esm.layers:
        layer.__dict__.pop("forward_packed", None)


def is_compiled(esm: torch.nn.Module) -> bool:
    """Whether the layers run compiled code (set by compile_packed_layers, not yet dropped)."""
    return any("forward_packed" in layer.__dict__ for layer in esm.layers)


def warm_up_frames() -> list[Frame]:
    """A few frames of different lengths (proteins of 8, 49 and 166 residues, the codons to
    match): enough to compile every kernel of the packed path for any batch size."""
    residues = "ACDEFGHIKLMNPQRSTVWY"
    frames = []
    for n, length in enumerate((8, 49, 166)):
        aa = "M" + (residues * 9)[n : n + length - 1]
        frames.append(Frame(f"warm_up_{n}", ("ATG" + "GCA" * (length - 1))[: 3 * length], aa))
    return frames
