"""Put a loaded ESM-2 on its compute device, optionally running something on the device copy
while its weights are still being copied in.

The weights are copied tensor by tensor in their stored dtype (fp16 for the released 3B: half
the bytes of fp32 over the bus) and cast on the device, not on the host's cores, which several
workers share while they all start at once.

`while_copying` exists for torch.compile: compiling ESM-2's layers (tracing, then loading the
kernels from the on-disk cache) takes seconds of CPU time that need only the module's
structure, shapes and dtypes, not its values. Run on an empty copy of the right shape while
the weights stream in, it costs no extra start-up time. The compiled code reads the
parameters as inputs (Inductor does not freeze them into constants unless asked), so the
values copied in afterwards are the ones it computes with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from virnucpro.background import in_background
from virnucpro.models.esm2 import ESM2

log = logging.getLogger("virnucpro")


def esm_on_device(esm: ESM2, device: torch.device, dtype: torch.dtype, *,
                  while_copying: Callable[[ESM2], None] | None = None) -> tuple[ESM2, float]:
    """`esm` (any host dtype) as an eval-mode module on `device` in `dtype`, and the seconds
    its weights took to copy.

    while_copying(target): called on a background thread with the device module once its
    buffers (the rotary tables) are in place but before its weights are; this returns when
    both are done, re-raising anything it raised.
    """
    target = _empty_copy(esm, device, dtype)
    with torch.no_grad():
        for dst, src in zip(target.buffers(), esm.buffers(), strict=True):
            dst.copy_(src)  # small, and needed before any forward pass
    done = (in_background(lambda: while_copying(target), "compile-while-loading")
            if while_copying else lambda: None)
    t0 = time.perf_counter()
    try:
        _copy_parameters(esm, target, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the casts are queued on the device
    except BaseException:
        try:
            done()  # the thread uses the module: let it finish before the error unwinds
        except BaseException as beside:  # likely a consequence; the copy's error is the news
            log.debug("also failed beside the copy: %s: %s", type(beside).__name__, beside)
        raise
    copy_seconds = time.perf_counter() - t0
    done()
    return target, copy_seconds


def _empty_copy(esm: ESM2, device: torch.device, dtype: torch.dtype) -> ESM2:
    """The same architecture on `device`, parameters in `dtype`, values uninitialised."""
    with torch.device("meta"):
        target = ESM2(esm.num_layers, esm.embed_dim, esm.attention_heads,
                      alphabet_size=esm.embed_tokens.num_embeddings, token_dropout=esm.token_dropout)
    target = target.to(dtype=dtype).to_empty(device=device)  # int32 rotary bits stay int32
    return target.eval().requires_grad_(False)


@torch.no_grad()
def _copy_parameters(source: ESM2, target: ESM2, device: torch.device) -> None:
    for (name, dst), (src_name, src) in zip(target.named_parameters(), source.named_parameters(),
                                            strict=True):
        assert name == src_name, (name, src_name)
        dst.copy_(src.to(device))  # moved in the stored dtype, then cast where it lives
