"""torch.compile for ESM-2's packed layers, and the warm-up that compiles every kernel
before real work arrives.

Compiled in Inductor's deterministic mode: otherwise each worker process times candidate
reduction kernels (LayerNorm's block size and warps) on its own GPU and keeps the fastest,
and those candidates sum in different orders, so results would depend on the device count
(benchmarks/RESULTS.md, "Deterministic compilation").

LayerNorm is compiled as a one-pass ("persistent") reduction over the whole row. Inductor
makes that choice only for rows of up to 1,024 elements; over ESM-2 3B's 2,560 it otherwise
loops over each row twice (statistics, then normalisation). Measured on an H200 in one
compiled layer of ~98k packed tokens (benchmarks/esm_layer_kernels.py): the two LayerNorm
kernels went from 0.95 + 1.11 ms to 0.39 + 0.45 ms, the layer from 27.0 to 26.0 ms on reads
and 28.3 to 27.1 ms on contigs, with the same fidelity to fp32. The kernel's configuration is
fixed by Inductor's heuristics in deterministic mode, never timed, so it is the same in every
worker. (On the residual-in-GEMM path of H100/H200 GPUs, LayerNorm is virnucpro's own op
instead, models/layer_norm.py, and these choices do not reach it.)
"""

from __future__ import annotations

import functools
import logging

import torch

from virnucpro.stages.types import Frame

log = logging.getLogger("virnucpro")


# A layer's packed forward passes: the plain one, and the one that adds into the residual
# stream in place (ESM2.residual_in_gemm).
PACKED_METHODS = ("forward_packed", "accumulate_packed")


def compile_packed_layers(esm: torch.nn.Module) -> None:
    """torch.compile each ESM-2 layer's packed forward (fuses LayerNorm, rotary, GELU and
    residual adds around the GEMMs, where they are not virnucpro's own ops already). Token
    counts vary per batch: dynamic shapes, so one compilation serves every batch; the layers
    share code, so they share the compiled graph."""
    import torch._dynamo.config

    # Python floats (the attention scaling, LayerNorm's eps) as constants, as eager code sees
    # them. Traced as symbols, the default, Dynamo finds it cannot keep them symbolic and
    # traces the layer a second time: about half of a warm-cache compile (measured on the CPU:
    # 4.5 s -> 2.0 s for the first call). Results do not change: the values are the same.
    # A process-wide setting (Dynamo reads it when it traces, lazily, on the warm-up thread):
    # it applies to any other torch.compile in the process too, and is left set.
    torch._dynamo.config.specialize_float = True
    options = compile_options()
    factory = options.get("inductor_choices_class")
    choices = factory() if factory else None  # one object for every layer
    for layer in esm.layers:
        for name in PACKED_METHODS:  # torch.compile is lazy: only the one the model calls compiles
            compiled = torch.compile(getattr(layer, name), dynamic=True, options=options)
            setattr(layer, name, _under_choices(compiled, choices) if choices else compiled)


def _under_choices(compiled, choices):
    """`compiled`, called with Inductor's `choices` installed on the calling thread. The
    compile option alone is not enough: Inductor makes its choices object once per thread,
    on first use, and keeps it, so a thread that compiled anything before would compile these
    layers with its old choices, and the compile cache would store that kernel under these
    choices' key. Installing them around every call also covers a recompile on whatever
    thread it happens (a few microseconds a call)."""
    from torch._inductor.virtualized import V

    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with V.set_choices_handler(choices):
            return compiled(*args, **kwargs)
    return call


# Rows (reduction lengths) up to this many elements are reduced in one pass.
WHOLE_ROW_UP_TO = 4096
# Raised whenever WholeRowChoices decides differently: it is part of the compile cache's key.
_CHOICES_VERSION = 1


def compile_options() -> dict:
    """Inductor's options: deterministic, and LayerNorm in one pass over the row, where this
    PyTorch has the switches (older ones get a warning, or Inductor's own choice)."""
    import torch._inductor.config

    options = {}
    if hasattr(torch._inductor.config, "inductor_choices_class"):
        # Part of the compile cache's key, so a kernel cached under other choices is not
        # reused: through uuid() where PyTorch calls the factory for the key (2.13), through
        # the pickled partial's arguments where it pickles the factory (2.11).
        options["inductor_choices_class"] = functools.partial(whole_row_choices, WHOLE_ROW_UP_TO, _CHOICES_VERSION)
    if hasattr(torch._inductor.config.triton, "autotune_pointwise"):
        # Pointwise kernels (GELU, rotary, adds) with Inductor's first launch configuration,
        # not the faster of two by timing: the timing runs at start-up, beside the weights'
        # copy to the same GPU, and picked the slower one in some compiles (GELU 60 instead
        # of 42 ms a batch on an H200). Results do not depend on it; speed then does not either.
        options["triton.autotune_pointwise"] = False
    if hasattr(torch._inductor.config, "deterministic"):
        return {"deterministic": True, **options}
    log.warning("this PyTorch (%s) has no deterministic mode for torch.compile: results may "
                "differ in the last bits between devices; --no-compile avoids that", torch.__version__)
    return options


def whole_row_choices(up_to: int = WHOLE_ROW_UP_TO, version: int = _CHOICES_VERSION):
    """Inductor's heuristics, but rows of up to `up_to` elements reduced in one pass.

    A factory, as torch._inductor.config.inductor_choices_class takes one: the class is made
    here so that importing this module does not import Inductor (start-up's critical path)."""
    import torch._inductor.config
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class WholeRowChoices(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction):
            # INNER: a reduction along contiguous rows, as LayerNorm's over the embedding.
            if (torch._inductor.config.triton.persistent_reductions and not cooperative_reduction
                    and features.get_reduction_hint() == ReductionHint.INNER):
                return V.graph.sizevars.statically_known_leq(features.reduction_numel, up_to)
            return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

        def uuid(self) -> str:  # the compile cache's key for these choices
            return f"virnucpro-whole-row-{up_to}-v{version}"

    return WholeRowChoices()


def uncompile_packed_layers(esm: torch.nn.Module) -> None:
    """Drop the compiled wrappers: the class's own (eager) method shows through again."""
    for layer in esm.layers:
        for name in PACKED_METHODS:
            layer.__dict__.pop(name, None)


def is_compiled(esm: torch.nn.Module) -> bool:
    """Whether the layers run compiled code (set by compile_packed_layers, not yet dropped)."""
    return any(name in layer.__dict__ for layer in esm.layers for name in PACKED_METHODS)


def warm_up_frames() -> list[Frame]:
    """A few frames of different lengths (proteins of 8, 49 and 166 residues, the codons to
    match): enough to compile every kernel of the packed path for any batch size."""
    residues = "ACDEFGHIKLMNPQRSTVWY"
    frames = []
    for n, length in enumerate((8, 49, 166)):
        aa = "M" + (residues * 9)[n : n + length - 1]
        frames.append(Frame(f"warm_up_{n}", ("ATG" + "GCA" * (length - 1))[: 3 * length], aa))
    return frames
