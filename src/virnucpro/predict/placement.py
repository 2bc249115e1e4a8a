"""Put a run's models on their compute device: the predictor, ready, with ESM-2 compiled and
warmed up beside the copy of its weights.

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
from dataclasses import dataclass

import torch

from virnucpro.engine.background import in_background
from virnucpro.models.bundle import ModelBundle
from virnucpro.models.esm2 import ESM2
from virnucpro.predict.budget import MIN_GPU_BATCH_TOKENS, batch_tokens_for
from virnucpro.predict.compile import compile_packed_layers, warm_up_frames
from virnucpro.predict.fp8 import check_fp8_device, fp8_linears
from virnucpro.predict.precision import Precision
from virnucpro.predict.predictor import FramePredictor

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class Placement:
    predictor: FramePredictor
    copy_seconds: float  # ESM-2's weights to the device
    compile_seconds: float | None  # compiling and the warm-up shard, beside the copy; None: not compiled


def place_predictor(bundle: ModelBundle, device: torch.device, precision: Precision, *,
                    batch_tokens: int | None = None, compile: bool = False,
                    fp8_keep: tuple[str, ...] = ()) -> Placement:
    """The bundle's models on `device`, as a ready FramePredictor whose batch budget is sized
    from the memory left once they are resident (unless `batch_tokens` pins it).

    With `compile` (on the packed path only), ESM-2's layers are compiled on the empty device
    copy while its weights stream in, and a small warm-up shard runs through a predictor of
    its own, so every kernel exists before the first real shard: start-up pays for the slower
    of the two instead of both. With fp8, ESM-2's linear layers but those in `fp8_keep`
    become fp8 as their weights arrive (predict/fp8.py)."""
    if precision.fp8:
        check_fp8_device(device)
    # DNABERT-S keeps fp32 weights under autocast; the classifier is tiny, and fp32 keeps its
    # scores comparable to the original's.
    dnabert = bundle.dnabert.to(device=device, dtype=precision.dnabert_dtype).eval()
    classifier = bundle.classifier.to(device=device, dtype=torch.float32).eval()

    def ready(esm: ESM2, tokens: int) -> FramePredictor:
        return FramePredictor(bundle.tokenizer, dnabert, esm, classifier, device, precision, tokens)

    compile_seconds: list[float] = []

    def compile_and_warm_up(esm: ESM2) -> None:
        t0 = time.perf_counter()
        compile_packed_layers(esm)
        ready(esm, batch_tokens or MIN_GPU_BATCH_TOKENS).predict(warm_up_frames())
        compile_seconds.append(time.perf_counter() - t0)

    beside = compile_and_warm_up if compile and precision.packed else None
    esm, copy_seconds = esm_on_device(bundle.esm, device, precision.esm_dtype, while_copying=beside,
                                      fp8_keep=fp8_keep if precision.fp8 else None)
    predictor = ready(esm, batch_tokens or batch_tokens_for(device, esm.embed_dim))
    return Placement(predictor, copy_seconds, compile_seconds[0] if compile_seconds else None)


def esm_on_device(esm: ESM2, device: torch.device, dtype: torch.dtype, *,
                  while_copying: Callable[[ESM2], None] | None = None,
                  fp8_keep: tuple[str, ...] | None = None) -> tuple[ESM2, float]:
    """`esm` (any host dtype) as an eval-mode module on `device` in `dtype`, and the seconds
    its weights took to copy. fp8_keep: when given, the linear layers (but those it names)
    become fp8 ones, quantised as their weights arrive.

    while_copying(target): called on a background thread with the device module once its
    buffers (the rotary tables) are in place but before its weights are; this returns when
    both are done, re-raising anything it raised.
    """
    target = _empty_copy(esm, device, dtype)
    with torch.no_grad():
        for dst, src in zip(target.buffers(), esm.buffers(), strict=True):
            dst.copy_(src)  # small, and needed before any forward pass
    quantised = {prefix: new for prefix, _, new in fp8_linears(target, fp8_keep)} if fp8_keep is not None else {}
    done = (in_background(lambda: while_copying(target), "compile-while-loading")
            if while_copying else lambda: None)
    t0 = time.perf_counter()
    try:
        _copy_parameters(esm, target, device, quantised)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the casts are queued on the device
    except BaseException:
        try:
            done()  # the thread uses the module: let it finish before the error unwinds
        except BaseException as beside:  # noqa: BLE001 - likely a consequence; the copy's error is the news
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
def _copy_parameters(source: ESM2, target: ESM2, device: torch.device, quantised: dict) -> None:
    """Each parameter moved in its stored dtype, then cast where it lives; those of layers
    turned fp8 (`quantised`: parameter prefix -> Fp8Linear) are quantised there instead."""
    targets = dict(target.named_parameters())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, src in source.named_parameters():
        prefix, _, kind = name.rpartition(".")
        if prefix in quantised:
            pending.setdefault(prefix, {})[kind] = src.to(device)
            if len(pending[prefix]) == 2:  # weight and bias are both here
                parts = pending.pop(prefix)
                quantised[prefix].load(parts["weight"], parts["bias"])
        else:
            targets.pop(name).copy_(src.to(device))
    assert not pending and not targets, (sorted(pending), sorted(targets))
